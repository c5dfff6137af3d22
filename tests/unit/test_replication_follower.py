"""The database follower's own decisions that need no server: the files it writes, the
restart a real node gets when the server's settings change (tests/netns has the rest)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from agent.events import EventLog
from agent.ports.files import FileTree
from ha.replication.database import DB_CERT, DB_KEY, PAIR_CA, DatabaseReplication, DbSettings

KEY = bytes(range(32))


class Restarts:
    """A systemd port that records restarts."""

    def __init__(self) -> None:
        self.restarted: list[str] = []

    async def restart(self, unit: str, within: float = 90.0) -> str:
        self.restarted.append(unit)
        return "done"


def follower(tmp_path: Path, systemd: Restarts | None) -> DatabaseReplication:
    settings = DbSettings(socket="/run/mysqld/mysqld.sock", port=3306,
                          own=ipaddress.ip_address("10.0.0.11"),
                          peer=ipaddress.ip_address("10.0.0.12"), max_lag_s=5)
    (tmp_path / "root" / "etc" / "mysql" / "mariadb.conf.d").mkdir(parents=True)
    return DatabaseReplication(settings, lambda: KEY, EventLog(),
                               files=FileTree(tmp_path / "root"),
                               systemd=systemd)  # type: ignore[arg-type]


async def test_the_first_prepare_writes_the_files_and_restarts_the_server(tmp_path: Path
                                                                          ) -> None:
    systemd = Restarts()
    db = follower(tmp_path, systemd)
    done = await db.prepare()
    root = tmp_path / "root"
    drop_in = root / "etc/mysql/mariadb.conf.d/90-voxnode-replication.cnf"  # Debian's place
    assert drop_in.exists() and "server_id = 167772171" in drop_in.read_text()
    for path in (DB_KEY, DB_CERT, PAIR_CA):
        assert (root / path.lstrip("/")).exists(), path
    assert (root / DB_KEY.lstrip("/")).stat().st_mode & 0o077 == 0o040  # group read only
    assert systemd.restarted == ["mariadb.service"]
    assert "restarted mariadb.service to take the pair's settings" in done
    # nothing changed: no restart
    assert await db.prepare() == []
    assert systemd.restarted == ["mariadb.service"]
    key_before = (root / DB_KEY.lstrip("/")).read_bytes()
    # a new pair key: a new CA and certificate, the node key kept; TLS reloads, no restart
    other = DatabaseReplication(db.settings, lambda: bytes(32), EventLog(),
                                files=FileTree(root), systemd=systemd)  # type: ignore[arg-type]
    done = await other.prepare()
    assert any("issued the database's certificate" in d for d in done)
    assert (root / DB_KEY.lstrip("/")).read_bytes() == key_before
    assert systemd.restarted == ["mariadb.service"]


async def test_without_systemd_nothing_is_restarted(tmp_path: Path) -> None:
    db = follower(tmp_path, None)
    done = await db.prepare()
    assert not any("restarted" in d for d in done)


# --- the file sync's receiver unit ---------------------------------------------------------


class Units(Restarts):
    def __init__(self) -> None:
        super().__init__()
        self.stopped: list[str] = []

    async def stop(self, unit: str, within: float = 90.0) -> str:
        self.stopped.append(unit)
        return "done"


async def test_the_receiver_restarts_when_its_files_change_and_stops_when_dissolved(
        tmp_path: Path) -> None:
    from ha.replication import sshkeys
    from ha.replication.files import FileSettings, FileSync

    root = tmp_path / "root"
    (root / "srv" / "rec").mkdir(parents=True)
    units = Units()
    sync = FileSync(FileSettings(("/srv/rec",), ipaddress.ip_address("10.0.0.11"),
                                 ipaddress.ip_address("10.0.0.12"), 2048),
                    lambda: KEY, EventLog(), files=FileTree(root),
                    systemd=units)  # type: ignore[arg-type]
    done = await sync.prepare()
    assert "restarted voxnode-sync-sshd.service" in done
    for node_path in (sshkeys.SSHD_CONFIG, sshkeys.AUTHORIZED_KEYS, sshkeys.KNOWN_HOSTS,
                      sshkeys.HOST_KEY, sshkeys.path_key_file("/srv/rec")):
        assert (root / node_path.lstrip("/")).exists(), node_path
    assert (root / sshkeys.HOST_KEY.lstrip("/")).stat().st_mode & 0o077 == 0
    assert await sync.prepare() == []  # nothing changed: no restart
    assert units.restarted == ["voxnode-sync-sshd.service"]
    assert await sync.dissolve() == ["stopped voxnode-sync-sshd.service"]
    assert units.stopped == ["voxnode-sync-sshd.service"]


def test_a_position_too_long_for_a_heartbeat_is_left_out(tmp_path: Path) -> None:
    from ha.protocol import MAX_DB_TEXT, Role
    from ha.replication.mariadb import DbStatus

    db = follower(tmp_path, None)
    long = ",".join(f"{d}-167772171-{d}" for d in range(60))
    assert len(long) > MAX_DB_TEXT
    db.status = DbStatus(read_only=False, binlog_position=long, slave_position="",
                         current_position=long, semi_sync_master=True, semi_sync_clients=1,
                         semi_sync_slave=False)
    db.opened, db.fork, db.fork_known = True, long, True
    position, sync, fork = db.report(Role.MASTER)
    assert (position, sync, fork) == ("", "semi", "")
    db.status = DbStatus(read_only=False, binlog_position="0-1-5", slave_position="",
                         current_position="0-1-5", semi_sync_master=True,
                         semi_sync_clients=1, semi_sync_slave=False)
    db.fork = "0-1-2"
    assert db.report(Role.MASTER) == ("0-1-5", "semi", "0-1-2")
    db.fork_known = False  # a follower that found the server writable: no fork said
    assert db.report(Role.MASTER) == ("0-1-5", "semi", "")


async def test_the_tls_directory_is_one_the_database_server_can_enter(tmp_path: Path) -> None:
    """Made by the agent (umask 0027) it would be root's alone and the server (user mysql)
    would not start with the pair's TLS settings."""
    import grp
    import os

    gid = os.getgid() if not any(g.gr_name == "mysql" for g in grp.getgrall()) else (
        grp.getgrnam("mysql").gr_gid)
    db = follower(tmp_path, None)
    root = tmp_path / "root"
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/group").write_text(f"root:x:0:\nmysql:x:{gid}:\n")
    old = os.umask(0o027)
    try:
        done = await db.prepare()
    finally:
        os.umask(old)
    tls = root / "etc/voxnode/tls"
    assert tls.stat().st_mode & 0o7777 == 0o750 and tls.stat().st_gid == gid
    assert any("readable by the database server" in d for d in done)
    assert not any("readable by the database server" in d for d in await db.prepare())
