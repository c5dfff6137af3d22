"""The database follows the pair's roles: the master's is writable, the slave's a read-only
replica of the master's, and no acknowledged transaction is lost when the role moves.

``DatabaseReplication`` is owned by ``ha.manager.HAManager`` while the pair runs with
``ha.replication.database.engine: mariadb``:

- ``prepare`` writes the server's drop-in and the TLS files (a node key of its own, a
  certificate for its management address from the CA the pair key derives) and makes sure
  the replication account exists for the peer's address; it runs at start and whenever
  the pair key changes.
- A follower task looks at the server every ``POLL_S`` and converges it: a node that is not
  master is read-only and replicates from the peer while the peer is master; a master is
  writable (a server that restarted comes back read-only and is reopened). It notices a
  returning old master that holds transactions the master lacks (it stays read-only, does
  not replicate, and needs a full sync), a replica that stopped, lag over the limit, and
  semi-synchronous replication that fell back to asynchronous; each change of state is an
  event.
- ``promote`` (the manager calls it while taking the role): after a switchover it waits
  until the old master's last transaction, which the release carries, is applied; after a
  crash it applies what the relay log holds; then it opens the server for writes.
- ``freeze`` (a master giving the role up): read-only and ``FLUSH TABLES WITH READ LOCK``;
  the position it froze at goes in every message from then on, for the new master to wait
  for.
- ``report`` is what this node's heartbeats carry (its position, and whether commits wait
  for the replica); ``risk`` is why a slave must not take over on its own (the master said
  its replication was asynchronous: acknowledged transactions may be missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from agent.errors import VoxnodeError
from agent.events import EventLog
from agent.ports.files import FileTree, create_new, durable, fsync_file
from agent.ports.systemd import SystemdPort
from agent.state.model import DatabaseEngine, DesiredState
from ha.config import ha_management_ip
from ha.machine import PeerView, Reason
from ha.protocol import MAX_DB_TEXT, Role
from ha.replication import tls
from ha.replication.gtid import BadPosition, Position, ahead_of, describe, parse_position
from ha.replication.mariadb import (
    DatabaseError,
    DbStatus,
    MariaDB,
    TlsFiles,
    render_server_config,
    replication_secret,
    restart_from,
    server_id_for,
)

log = logging.getLogger("voxnode.ha.replication")

POLL_S = 0.5
SWITCHOVER_APPLY_S = 10.0  # a switchover's new master waits this long for the old one's last
CRASH_APPLY_S = 30.0  # a crash's new master applies its relay log for at most this long
DB_UNIT = "mariadb.service"
MARIADB_BINLOG = "/usr/bin/mariadb-binlog"
SETTINGS_EVERY_S = 30.0  # how often the running server's settings are compared
RESTART_EVERY_S = 30.0  # a replica stopped on an error is started again this often
DIVERGED_ERRNO = 1236  # the master has no such GTID in its binary log: another history
TLS_DIR = "/etc/voxnode/tls"
DB_KEY = f"{TLS_DIR}/db.key"
DB_CERT = f"{TLS_DIR}/db.crt"
PAIR_CA = f"{TLS_DIR}/pair-ca.crt"
# where the server reads drop-ins: EL (the appliance), then Debian (the lab)
DROP_IN_DIRS = ("/etc/my.cnf.d", "/etc/mysql/mariadb.conf.d")
DROP_IN = "90-voxnode-replication.cnf"

IP = IPv4Address | IPv6Address


@dataclass(frozen=True)
class DbSettings:
    """What the database follower runs with, from one document."""

    socket: str  # node path of the server's unix socket
    port: int
    own: IP  # this node's management address
    peer: IP
    max_lag_s: float

    @classmethod
    def from_state(cls, state: DesiredState) -> DbSettings | None:
        """For a validated document: None unless the pair runs with a MariaDB database."""
        ha = state.ha
        database = ha.replication.database
        if not ha.enabled or database.engine is not DatabaseEngine.MARIADB or ha.peer is None:
            return None
        own = ha_management_ip(state)
        if own is None:
            return None
        return cls(socket=database.socket, port=database.port, own=own, peer=ha.peer,
                   max_lag_s=ha.replication.max_lag_s)


class SwitchoverIncomplete(Exception):
    """A switchover's new master could not apply the old master's last transaction."""


class DatabaseReplication:
    def __init__(self, settings: DbSettings, pair_key: Callable[[], bytes], events: EventLog,
                 *, files: FileTree | None = None, systemd: SystemdPort | None = None,
                 wall: Callable[[], float] = time.time, saved_dir: Path | None = None) -> None:
        self.settings = settings
        # where the transactions of a diverged node are saved (the state directory's)
        self.saved_dir = saved_dir
        self.saved: str | None = None  # the file holding them, once saved
        self._saving: asyncio.Task[str | None] | None = None
        self.systemd = systemd  # restarts the server when its settings change (a real node)
        self.settings_problem: str | None = None  # what the running server lacks
        self._checked_at = float("-inf")
        self.files = files or FileTree(Path("/"))
        self._pair_key = pair_key
        self.events = events
        self.wall = wall
        self.db = MariaDB(str(self.files.path(settings.socket)))
        self.status: DbStatus | None = None
        self.state = "starting"  # what ``replication status`` says; events on each change
        self.detail = ""
        self.error: str | None = None
        self.frozen_at: str | None = None
        self.diverged: str | None = None  # transactions this node has that the master lacks
        self.needs_full_sync = False
        # a full sync holds the follower while it copies (``hold``); once the copy began to
        # replace this node's databases, they are ``incomplete`` until it ends verified
        self.hold: str | None = None
        self.incomplete: str | None = None
        self.lag_s: int | None = None
        self.lag_transactions: int | None = None
        self.last_promotion: dict[str, Any] | None = None
        # opened for writes in this role (by ``promote``): only then do heartbeats carry a
        # master's position (before, the last look is a replica's, older than the fork)
        self.opened = False
        self.fork = ""  # the position it opened at
        self._secret: str | None = None
        self._account_for: tuple[str, str] | None = None  # (peer, secret) of the account
        self._replicating_from: tuple[str, str] | None = None
        self._restarted_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # the role's steps (promote, freeze) and the follower's looks never interleave: a
        # follower that saw "master, read-only" must not open the server (and throw the
        # relay log away) while a switchover's promotion still waits for it to be applied
        self._lock = asyncio.Lock()
        self.fork_known = False
        self._view: Callable[[], tuple[Role, PeerView | None, bool]] = (
            lambda: (Role.INIT, None, False))

    # --- files -------------------------------------------------------------------------

    @property
    def tls_files(self) -> TlsFiles:
        """The TLS files as the server (a process on this machine) finds them."""
        return TlsFiles(str(self.files.path(DB_CERT)), str(self.files.path(DB_KEY)),
                        str(self.files.path(PAIR_CA)))

    def drop_in_path(self) -> str:
        for directory in DROP_IN_DIRS:
            if self.files.path(directory).is_dir():
                return f"{directory}/{DROP_IN}"
        return f"{DROP_IN_DIRS[0]}/{DROP_IN}"

    def render(self) -> str:
        return render_server_config(server_id_for(self.settings.own), str(self.settings.own),
                                    self.tls_files, self.settings.port)

    def _tls_dir(self) -> list[str]:
        """The TLS directory is one the server (user mysql) can enter: 0750, group mysql.
        Made by the agent (its umask 0027) it would be root's alone, and the server would
        not start with the pair's TLS settings."""
        path = self.files.path(TLS_DIR)
        path.mkdir(parents=True, exist_ok=True)
        gid = self.files.group_id("mysql")
        st = path.stat()
        if gid is None or (st.st_gid == gid and st.st_mode & 0o7777 == 0o750):
            return []
        os.chown(path, -1, gid)
        os.chmod(path, 0o750)
        return [f"made {TLS_DIR} readable by the database server (group mysql)"]

    def _write_files(self, key: bytes, now: dt.datetime) -> list[str]:
        """The drop-in and the TLS files (blocking: run in a worker thread)."""
        done = self._tls_dir()
        node_key = self.files.read(DB_KEY)
        if node_key is None:
            node_key = tls.new_node_key()
            self.files.write_if_changed(DB_KEY, node_key, 0o640, group="mysql")
            done.append(f"created the database's TLS key {DB_KEY}")
        ca = self.files.read(PAIR_CA)
        if ca is None or not tls.ca_matches(ca, key):
            self.files.write_if_changed(PAIR_CA, tls.pair_ca_certificate(key), 0o644)
            done.append(f"wrote the pair's database CA {PAIR_CA}")
        cert = self.files.read(DB_CERT)
        if cert is None or not tls.certificate_matches(cert, key, node_key, self.settings.own,
                                                       now):
            self.files.write_if_changed(
                DB_CERT, tls.issue_node_certificate(key, node_key, self.settings.own, now),
                0o644)
            done.append(f"issued the database's certificate for {self.settings.own}")
        path = self.drop_in_path()
        if self.files.write_if_changed(path, self.render(), 0o644):
            done.append(f"wrote the database server's replication settings {path}")
        return done

    async def prepare(self) -> list[str]:
        """Files, then (if the server answers) TLS reloaded and the peer's account."""
        key = self._pair_key()
        done = await asyncio.to_thread(self._write_files, key,
                                       dt.datetime.fromtimestamp(self.wall(), dt.UTC))
        self._secret = replication_secret(key)
        restart = any(d.startswith("wrote the database server's") for d in done)
        if restart and self.systemd is not None:
            # static settings (the binary log, the relay log, the role at start) take a
            # restart; the PBX loses its database for that moment (the plan says so)
            try:
                await self.systemd.restart(DB_UNIT)
                done.append(f"restarted {DB_UNIT} to take the pair's settings")
            except VoxnodeError as exc:
                done.append(f"{DB_UNIT} did not restart: {exc.message}")
                self.events.emit("replication.database-restart-failed", exc.message,
                                 level=logging.ERROR)
        elif done:
            with contextlib.suppress(DatabaseError):
                await self.db.execute("FLUSH LOCAL SSL", what="reloading the TLS files")
        self._checked_at = float("-inf")  # look at the running settings again
        self._wake.set()
        return done

    def wanted_settings(self) -> dict[str, str]:
        """What the running server must show (``SHOW GLOBAL VARIABLES``) for the pair."""
        return {
            "log_bin": "ON", "log_slave_updates": "ON", "binlog_format": "ROW",
            "gtid_strict_mode": "ON", "server_id": str(server_id_for(self.settings.own)),
            "rpl_semi_sync_master_enabled": "ON", "rpl_semi_sync_slave_enabled": "ON",
            "rpl_semi_sync_master_wait_point": "AFTER_SYNC", "sync_relay_log": "1",
            "have_ssl": "YES",
        }

    async def _check_settings(self) -> None:
        """Every ``SETTINGS_EVERY_S`` (and after each prepare): the settings the pair needs
        are those the server runs with, or ``settings_problem`` says which are not."""
        if time.monotonic() - self._checked_at < SETTINGS_EVERY_S:
            return
        self._checked_at = time.monotonic()
        running = await self.db.variables(tuple(self.wanted_settings()))
        wrong = [f"{name} is {running.get(name, 'unset')} (wanted {value})"
                 for name, value in self.wanted_settings().items()
                 if running.get(name, "").upper() != value.upper()]
        problem = ("the server runs without the pair's settings (" + ", ".join(wrong)
                   + f"): restart it (systemctl restart {DB_UNIT.removesuffix('.service')})"
                   if wrong else None)
        if problem != self.settings_problem:
            self.settings_problem = problem
            if problem is not None:
                self.events.emit("replication.database-settings", problem,
                                 level=logging.ERROR)

    # --- the follower ------------------------------------------------------------------

    def start(self, view: Callable[[], tuple[Role, PeerView | None, bool]]) -> None:
        """``view()``: this node's role, the peer's last view and whether it is alive."""
        self._view = view
        self._task = asyncio.create_task(self._follow_loop(), name="ha-database")

    async def stop(self) -> None:
        task, self._task = self._task, None
        for running in (task, self._saving):
            if running is not None and not running.done():
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError, DatabaseError):
                    await running
        await self.db.unfreeze()

    def wake(self) -> None:
        self._wake.set()

    async def _follow_loop(self) -> None:
        while True:
            try:
                await self.converge()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the follower (nor the agent)
                log.exception("database follower")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._wake.wait()

    def _set_state(self, state: str, detail: str, level: int = logging.INFO) -> None:
        if (state, detail) != (self.state, self.detail):
            self.state, self.detail = state, detail
            self.events.emit(f"replication.database-{state}", detail, level=level)

    async def converge(self) -> None:
        """One look at the server, and what the role asks of it."""
        async with self._lock:
            await self._converge()

    async def _converge(self) -> None:
        try:
            status = await self.db.status()
        except DatabaseError as exc:
            self.status, self.error = None, exc.args[0]
            self._replicating_from = None
            self._checked_at = float("-inf")  # a server that comes back: its settings again
            self._set_state("unreachable", exc.args[0], logging.ERROR)
            return
        if self.status is not None and status.uptime_s < self.status.uptime_s:
            # restarted between two looks: its settings again, and a replica set up again
            self._checked_at = float("-inf")
            self._replicating_from = None
            self.events.emit("replication.database-restarted", "the database server "
                             "restarted", level=logging.WARNING)
        self.status, self.error = status, None
        role, peer, alive = self._view()
        try:
            await self._check_settings()
            await self._ensure_account()
            if role is Role.MASTER:
                await self._converge_master(status)
            else:
                await self._converge_replica(status, peer if alive else None)
        except DatabaseError as exc:
            self.error = exc.args[0]
            self._set_state("failing", exc.args[0], logging.ERROR)

    async def _ensure_account(self) -> None:
        if self._secret is None:
            return
        wanted = (str(self.settings.peer), self._secret)
        if self._account_for != wanted:
            await self.db.ensure_account(self.settings.peer, self._secret, tls=True)
            self._account_for = wanted

    async def _converge_master(self, status: DbStatus) -> None:
        self.lag_s = self.lag_transactions = None
        if self.frozen_at is not None:
            return  # giving the role up: stays frozen until the role is gone
        if status.read_only or status.replica is not None:
            # not opened yet (the server was down at the promotion), or a server that
            # restarted (it starts read-only, as a replica) while master
            self.fork, problem = await self.db.promote(CRASH_APPLY_S)
            self.fork_known = True
            if problem is not None:
                self.events.emit("replication.database-opened-incomplete", "opened for writes "
                                 f"without all the master's transactions: {problem}",
                                 level=logging.ERROR)
            self.status = await self.db.status()
            self.opened = True
            self.last_promotion = {"ok": True, "position": self.fork, "missing": problem,
                                   "took_ms": None, "time": self.wall(),
                                   "by": "the follower (the server was read-only)"}
            self._set_state("master", "opened for writes (the server was read-only)",
                            logging.WARNING)
            return
        self.opened = True
        if status.semi_sync_master and status.semi_sync_clients > 0:
            self._set_state("master", "writable; commits wait for the replica "
                            "(semi-synchronous)")
        else:
            self._set_state("master", "writable; commits do NOT wait for the replica "
                            "(asynchronous): a crash now can lose acknowledged transactions",
                            logging.WARNING)

    async def _converge_replica(self, status: DbStatus, peer: PeerView | None) -> None:
        if self.frozen_at is not None and (peer is None or peer.role is not Role.MASTER):
            return  # handed over: frozen until the new master is there to replicate from
        if not status.read_only:
            await self.db.set_read_only(True)
            self.events.emit("replication.database-read-only", "the database was writable "
                             "on a node that is not master: set read-only",
                             level=logging.WARNING)
        if self.hold is not None:
            self.lag_s = self.lag_transactions = None
            self._set_state("full-sync", self.hold)
            return
        if self.incomplete is not None:
            self.lag_s = self.lag_transactions = None
            self._set_state("needs-full-sync", f"{self.incomplete}; it does not replicate "
                            "until a full sync succeeds (voxnode ha full-sync)", logging.ERROR)
            return
        if self.diverged is not None:
            self._set_state("diverged", f"this node has transactions the master lacks: "
                            f"{self.diverged}; it stays read-only and does not replicate "
                            "until a full sync", logging.ERROR)
            return
        self.opened = False
        if peer is None or peer.role is not Role.MASTER:
            self.lag_s = self.lag_transactions = None
            self._set_state("waiting", "read-only; no master to replicate from")
            return
        if not peer.db_sync:
            self._set_state("waiting", f"read-only; the master {self.settings.peer} has not "
                            "opened its database yet")
            return
        own = _parse(status.binlog_position)
        master = _parse(peer.db)
        fork = _parse(peer.db_fork) if peer.db_fork else None  # "": the master does not know
        if own is not None and fork is not None:
            # what this node wrote itself past the point where the master opened: nobody
            # else has it (the master's own transactions after the fork are its own)
            mine = server_id_for(self.settings.own)
            extra = [m for m in ahead_of(own, fork) if m.last.server == mine]
            if extra:
                await self._quarantine(describe(extra), since=peer.db_fork)
                return
        replica = status.replica
        source = (str(self.settings.peer), self._secret or "")
        if replica is not None and replica.io_errno == DIVERGED_ERRNO:
            await self._quarantine(f"the master's binary log lacks this node's position "
                                   f"({status.current_position}): {replica.io_error}")
            return
        if replica is None or replica.master_host != source[0] or (
                self._replicating_from != source):
            await self.db.become_replica(self.settings.peer, self.settings.port, source[1],
                                         self.tls_files)
            self._replicating_from = source
            self._restarted_at = time.monotonic()
            self.frozen_at = None
            self._set_state("replicating", f"read-only replica of {self.settings.peer}")
            return
        if "No" in (replica.io_running, replica.sql_running):
            failed = (replica.sql_running == "No" and replica.sql_error) or (
                replica.io_running == "No" and replica.io_error)
            if not failed:
                # stopped without an error (a server that restarted, someone's STOP SLAVE):
                # started again at once
                await self.db.execute("START SLAVE", what="starting replication")
                self._set_state("replicating", f"read-only replica of {self.settings.peer}")
                return
            # stopped on an error: said, and tried again now and then (not every look: a
            # row the applier cannot apply fails the same way each time)
            error = (f"applying the master's transactions failed: {replica.sql_error}"
                     if replica.sql_running == "No" and replica.sql_error
                     else f"reading the master's binary log failed: {replica.io_error}")
            self.lag_s = self.lag_transactions = None
            self._set_state("failing", error, logging.ERROR)
            if time.monotonic() - self._restarted_at >= RESTART_EVERY_S:
                self._restarted_at = time.monotonic()
                await self.db.execute("START SLAVE", what="restarting replication")
            return
        self.frozen_at = None
        self.lag_s = replica.seconds_behind
        applied = _parse(status.slave_position) or {}
        self.lag_transactions = (sum(m.count for m in ahead_of(master, applied))
                                 if master is not None else None)
        if replica.io_running != "Yes":
            self._set_state("connecting", f"connecting to {self.settings.peer}"
                            + (f": {replica.io_error}" if replica.io_error else ""),
                            logging.WARNING)
        elif self.lag_s is not None and self.lag_s > self.settings.max_lag_s:
            self._set_state("lagging", f"replication lag over the "
                            f"{self.settings.max_lag_s:g} s limit (see lag_s)", logging.WARNING)
        else:
            self._set_state("replicating", f"read-only replica of {self.settings.peer}")

    async def _quarantine(self, what: str, since: str | None = None) -> None:
        if self.diverged is None and self._saving is None:
            self._saving = asyncio.create_task(self._save_diverged(since, what),
                                               name="ha-database-save-diverged")
        with contextlib.suppress(DatabaseError):
            await self.db.execute("STOP SLAVE", what="stopping replication")
        self._replicating_from = None
        self.diverged = what
        self.needs_full_sync = True
        self._set_state("diverged", f"this node has transactions the master lacks: {what}; "
                        "it stays read-only and does not replicate until a full sync",
                        logging.ERROR)

    # --- the role moves ----------------------------------------------------------------

    async def promote(self, peer: PeerView | None, switchover: bool) -> list[str]:
        """Open this node's database for writes (the manager takes the role meanwhile).
        A switchover whose old master's last transaction is not applied in time raises
        ``SwitchoverIncomplete`` and opens nothing: the replica goes on applying and the
        manager gives the role back."""
        async with self._lock:
            return await self._promote(peer, switchover)

    async def _promote(self, peer: PeerView | None, switchover: bool) -> list[str]:
        steps = []
        started = time.monotonic()
        missing = None
        try:
            await self.db.unfreeze()
            self.frozen_at = None
            problem = None
            if switchover and peer is not None and peer.db:
                problem = await self.db.apply_relay_log(SWITCHOVER_APPLY_S, peer.db)
                if problem is not None:
                    self.events.emit("replication.database-switchover-incomplete",
                                     f"not opening for writes: {problem}",
                                     level=logging.ERROR)
                    self._wake.set()
                    raise SwitchoverIncomplete(
                        f"the old master's last transaction {peer.db} is not applied here: "
                        f"{problem}; not taking the role")
                steps.append(f"database: applied the old master's last transaction "
                             f"({peer.db})")
            if problem is None:
                problem = await self.db.apply_relay_log(CRASH_APPLY_S)
            fork = await self.db.open_for_writes()
            self.status = await self.db.status()
            self.opened, self.fork, self.fork_known = True, fork, True
            steps.append(f"database: writable at {fork or 'an empty position'}")
            if problem is not None:
                missing = problem
                steps.append(f"database: opened without all the master's transactions: "
                             f"{problem}")
                self.events.emit("replication.database-opened-incomplete", "opened for writes "
                                 f"without all the master's transactions: {problem}",
                                 level=logging.ERROR)
        except DatabaseError as exc:
            steps.append(f"database: {exc.args[0]}")
            self.events.emit("replication.database-promotion-failed", exc.args[0],
                             level=logging.ERROR)
            self.last_promotion = {"ok": False, "error": exc.args[0], "time": self.wall()}
            self._wake.set()
            return steps
        if peer is not None and peer.db and not switchover:
            known = _parse(peer.db)
            have = _parse(fork)
            if known is not None and have is not None and ahead_of(known, have):
                beyond = describe(ahead_of(known, have))
                missing = f"{missing}; {beyond}" if missing else beyond
                steps.append(f"database: the old master reported {beyond} beyond what "
                             "this node applied")
        self.last_promotion = {"ok": True, "position": fork, "missing": missing,
                               "took_ms": round((time.monotonic() - started) * 1000),
                               "time": self.wall()}
        self._replicating_from = None
        self.diverged = None
        self.hold = None
        self._wake.set()
        return steps

    async def save_diverged(self) -> str | None:
        """Wait for this node's diverged transactions to be saved (a full sync calls it
        before it replaces anything); the file, or None when nothing diverged."""
        if self._saving is None:
            return None
        return await asyncio.shield(self._saving)

    async def _save_diverged(self, since: str | None, what: str) -> str | None:
        """The binary log after ``since`` (the master's fork; None: all of it), decoded by
        ``mariadb-binlog``, under the state directory: the transactions only this node has
        are never lost to a full sync. Raises DatabaseError when it cannot."""
        if self.saved_dir is None:
            return None
        try:
            async with self.db._connection() as conn:
                logs = await self.db._run(conn, "SHOW BINARY LOGS", what="listing the binary "
                                          "logs")
            if not logs:
                return None
            first = str(logs[0]["Log_name"])
            stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(self.wall()))
            target = self.saved_dir / stamp / "diverged-transactions.sql"
            argv = [MARIADB_BINLOG, "--read-from-remote-server", f"--socket={self.db.socket}",
                    "--user=root", "--to-last-log", "--verbose",
                    *([f"--start-position={since}"] if since else []), first]
            fd = await asyncio.to_thread(create_new, target)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdout=fd, stderr=asyncio.subprocess.PIPE,
                    stdin=asyncio.subprocess.DEVNULL)
            finally:
                os.close(fd)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise DatabaseError(f"mariadb-binlog exited {proc.returncode}: "
                                    f"{err.decode(errors='replace').strip()[-300:]}")
            await durable(fsync_file, target)
        except (OSError, DatabaseError) as exc:
            text = exc.args[0] if isinstance(exc, DatabaseError) else str(exc)
            self.events.emit("replication.database-save-failed", "the transactions only this "
                             f"node has ({what}) could not be saved: {text}; a full sync "
                             "will not run until they are", level=logging.ERROR)
            self._saving = None  # tried again at the next full sync
            raise DatabaseError(f"saving this node's diverged transactions failed: {text}"
                                ) from None
        self.saved = str(target)
        self.events.emit("replication.database-diverged-saved", f"the transactions only this "
                         f"node has ({what}) are saved in {target}", level=logging.WARNING)
        return str(target)

    # --- a full sync -------------------------------------------------------------------

    async def hold_for_full_sync(self, why: str) -> None:
        """The follower stands still (replication stopped) while a full sync copies."""
        async with self._lock:
            self.hold = why
            await self.db.execute("STOP SLAVE", what="stopping replication for the full sync")
            self._replicating_from = None
            self._set_state("full-sync", why)

    def copy_started(self, why: str) -> None:
        """The copy begins to replace this node's databases: incomplete until it ends."""
        self.incomplete = why

    def release(self) -> None:
        """The full sync ended without touching the data (or failed before): replication
        goes on as it was."""
        self.hold = None
        self._wake.set()

    async def full_sync_done(self, position: str) -> None:
        """The copy is in and verified: go on replicating from its ``position``."""
        async with self._lock:
            await restart_from(self.db, position)
            self.hold = self.incomplete = self.diverged = None
            self.needs_full_sync = False
            self._replicating_from = None
            self._account_for = None  # the copy may have brought the master's accounts
            self.fork_known = False
        self._wake.set()

    async def freeze(self) -> list[str]:
        """Stop every write on this node (read-only and a global read lock)."""
        async with self._lock:
            return await self._freeze()

    async def _freeze(self) -> list[str]:
        self.opened = False
        try:
            self.frozen_at = await self.db.freeze()
        except DatabaseError as exc:
            self.events.emit("replication.database-freeze-failed", exc.args[0],
                             level=logging.ERROR)
            return [f"database: cannot be made read-only: {exc.args[0]}"]
        self._wake.set()
        return [f"database: read-only at {self.frozen_at or 'an empty position'}"]

    # --- what the pair sees ------------------------------------------------------------

    def report(self, role: Role) -> tuple[str, str, str]:
        """This node's position and state for its heartbeats: a master's binary log
        position and whether commits wait for the replica (``semi``/``async``); the frozen
        position of a master handing over (``frozen``); a working replica's applied
        position (``replica``); else ``("", "")``."""
        if self.frozen_at is not None:
            return self.frozen_at, "frozen", ""
        status = self.status
        if status is None:
            return "", "", ""
        if role is Role.MASTER and not self.opened:
            return "", "", ""
        if role is not Role.MASTER:
            # offered as a switchover target only while it replicates within the limit
            replica = status.replica
            working = (self.state == "replicating" and replica is not None
                       and replica.io_running == "Yes" and replica.sql_running == "Yes"
                       and replica.seconds_behind is not None
                       and replica.seconds_behind <= self.settings.max_lag_s
                       and len(status.slave_position) <= MAX_DB_TEXT)
            return (status.slave_position, "replica", "") if working else ("", "", "")
        semi = status.semi_sync_master and status.semi_sync_clients > 0
        position = status.binlog_position
        # a position too long for a heartbeat (many replication domains) is left out
        # rather than making the heartbeat one the peer refuses
        if len(position) > MAX_DB_TEXT:
            position = ""
        # the fork only when this agent opened the server itself: one that found it
        # writable (it restarted while master) does not know it, and says nothing
        fork = self.fork if self.fork_known and len(self.fork) <= MAX_DB_TEXT else ""
        return position, "semi" if semi else "async", fork

    @staticmethod
    def risk(peer: PeerView | None) -> Reason | None:
        """Why a slave must not take over on its own from this master."""
        if peer is None or peer.role is not Role.MASTER or peer.db_sync != "async":
            return None
        since = f" after {peer.db}" if peer.db else ""
        return Reason("replication-async", "The master's database replication fell back to "
                      f"asynchronous: acknowledged transactions{since} may be missing here "
                      "(`voxnode ha set-state master --force` takes the risk)")

    def own_risk(self) -> Reason | None:
        """This node's database is not the master's: diverged, or half-copied."""
        if self.incomplete is not None:
            return Reason("database-incomplete", f"This node's database is incomplete: "
                          f"{self.incomplete} (`voxnode ha full-sync`)")
        if self.diverged is not None:
            return Reason("database-diverged", f"This node's database has transactions the "
                          f"master lacks ({self.diverged}) and does not replicate")
        return None

    @staticmethod
    def switchover_blocker(peer: PeerView | None) -> str | None:
        """Why a planned switchover would lose transactions: the peer's database does not
        replicate from this node."""
        if peer is not None and peer.db_sync == "replica":
            return None
        return ("the peer's database is not replicating from this node (see `voxnode "
                "replication status` on it): a switchover now could lose transactions")

    def health(self) -> list[Reason]:
        found = []
        if self.settings_problem is not None:
            found.append(Reason("database-settings", f"Database: {self.settings_problem}"))
        if self.state == "unreachable":
            found.append(Reason("database-unreachable", f"Database: {self.detail}"))
        elif self.state in ("failing", "diverged", "lagging", "connecting", "full-sync",
                            "needs-full-sync"):
            found.append(Reason(f"database-{self.state}", f"Database: {self.detail}"))
        elif self.state == "master" and "NOT wait" in self.detail:
            found.append(Reason("replication-async", "Semi-synchronous replication fell back "
                                "to asynchronous: a crash now can lose acknowledged "
                                "transactions"))
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": "mariadb",
            "state": self.state,
            "detail": self.detail,
            "error": self.error,
            "lag_s": self.lag_s,
            "lag_transactions": self.lag_transactions,
            "frozen_at": self.frozen_at,
            "diverged": self.diverged,
            "needs_full_sync": self.needs_full_sync or self.incomplete is not None,
            "incomplete": self.incomplete,
            "diverged_saved": self.saved,
            "last_promotion": self.last_promotion,
            "settings_problem": self.settings_problem,
            "server": self.status.to_dict() if self.status else None,
        }


def _parse(text: str) -> Position | None:
    try:
        return parse_position(text)
    except BadPosition:
        return None
