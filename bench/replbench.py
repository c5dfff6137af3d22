"""The replication benchmark: the database half, in the namespace lab of
``lab/pair/harness.py`` with real MariaDB servers (``lab/pair/mariadb.py``).

Two implementations, run in the same harness:

- ``voxnode``: two real agents following the roles with their servers (``lab.pair.dbpair``:
  semi-synchronous, TLS, the agent's switchover and crash failover);
- ``manual``: the anchor, MariaDB replication configured by hand as the MariaDB manual
  describes it (GTID replication, ROW binlog, asynchronous, no TLS), the node IP on the
  master, and an operator's script for the switchover (read-only, ``MASTER_GTID_WAIT``,
  promote, move the node IP) and for a crash (promote the replica one second later, move
  the node IP).

Cases, each with writers in the client namespace inserting through the node IP
(``lab.pair.dbwriter``, one process per client):

- ``lag``: replication lag per row at 100 and 1,000 writes/s, from the rows themselves
  (the replica runs the table's trigger when it applies a row, ``slave_run_triggers_for_rbr``,
  so each row holds when it was written on the master and when it was applied on the
  replica, both on this machine's one clock);
- ``switchover``: planned switchovers at 200 writes/s (alternating direction): the
  acknowledged rows missing on the new master, and the write pause (the longest gap between
  two acknowledgements around it);
- ``crash``: a crash of the master (every process of its namespace frozen then killed) at
  200 writes/s, a fresh pair each time: the acknowledged rows missing on the new master;
- ``files``: the time a new 1 MB file written on the master takes to be whole on the slave
  (voxnode's file sync against lsyncd with ``delay=1`` over ssh, the anchor);
- ``fullsync``: the throughput of a full sync's database copy and file copy against the
  pair's ``bandwidth_kb`` (``FULLSYNC_KB``; a database of ``FULLSYNC_DB_MB`` in rows, files
  of ``FULLSYNC_FILES_MB``), from the job's own step times; the anchor is the same
  transfer by hand, unlimited: ``mariadb-dump | mariadb`` between the namespaces and
  ``rsync`` with ``--bwlimit`` between the same trees.

Only measured values are printed or written; a trial that fails is reported as failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lab.pair import mariadb as labdb
from lab.pair.dbpair import EXTRA_HA, DbPair, Writer, wait_for
from lab.pair.harness import PairLab
from lab.pair.mariadb import DbServer
from lab.pair.topology import NODE_ADDRESSES, NODE_IP, NODES, SUBNET_PREFIXLEN, Node, other
from lab.pair.voxnode import VoxnodePair

REPO = Path(__file__).resolve().parents[1]
CASES = ("lag", "switchover", "crash", "files", "fullsync")
FULLSYNC_KB = 4096
FULLSYNC_DB_MB = 16
FULLSYNC_FILES_MB = 32
FILE_BYTES = 1024 * 1024
LAG_RATES = (100, 1000)
SCHEMA = (
    "CREATE DATABASE pbx; CREATE TABLE pbx.calls (id BIGINT PRIMARY KEY AUTO_INCREMENT, "
    "seq BIGINT NOT NULL, at DATETIME(6)) ENGINE=InnoDB; "
    "CREATE USER pbx@'10.88.0.%' IDENTIFIED BY 'pbx'; "
    "GRANT SELECT, INSERT ON pbx.* TO pbx@'10.88.0.%'")


class Pair(Protocol):
    servers: dict[Node, DbServer]

    def master(self) -> Node: ...
    def switchover(self, master: Node) -> None: ...
    def after_crash(self, master: Node) -> Node: ...


def timed_applier(server: DbServer) -> None:
    """On the replica only (not replicated): a table of when each row was applied, filled
    by a trigger the applier runs (``slave_run_triggers_for_rbr``, read when the applier
    starts: restarted)."""
    server.sql("SET SESSION sql_log_bin = 0; "
               "CREATE TABLE IF NOT EXISTS pbx.applied (id BIGINT PRIMARY KEY, "
               "at DATETIME(6)) ENGINE=InnoDB; "
               "CREATE TRIGGER IF NOT EXISTS pbx.applied AFTER INSERT ON pbx.calls FOR EACH ROW "
               "INSERT INTO pbx.applied VALUES (NEW.id, SYSDATE(6)); "
               "SET GLOBAL slave_run_triggers_for_rbr = YES")
    if server.sql("SHOW SLAVE STATUS", check=False):
        server.sql("STOP SLAVE SQL_THREAD; START SLAVE SQL_THREAD")


# --- the anchor: replication by hand -------------------------------------------------------

MANUAL_CNF = """[mariadb]
server_id = {server_id}
log_bin = manual-bin
log_slave_updates = ON
binlog_format = ROW
gtid_strict_mode = ON
relay_log = manual-relay
read_only = {read_only}
"""


class ManualPair:
    """Two servers replicating as an administrator sets it up by hand."""

    def __init__(self, lab: PairLab) -> None:
        self.lab = lab
        self.servers: dict[Node, DbServer] = {}
        self.current: Node = "a"

    def up(self, timed: bool) -> Node:
        for i, node in enumerate(NODES):
            server = DbServer(self.lab.ns[node], self.lab.workdir / f"manual-{node}",
                              MANUAL_CNF.format(server_id=i + 1,
                                                read_only="OFF" if node == "a" else "ON"))
            server.install()
            server.start()
            self.servers[node] = server
        a = self.servers["a"]
        a.sql("CREATE USER repl@'10.88.0.%' IDENTIFIED BY 'repl'; "
              "GRANT REPLICATION SLAVE ON *.* TO repl@'10.88.0.%'")
        self.servers["b"].sql(self._change_to("a") + "; START SLAVE")
        self.lab.ip("a", "addr", "add", f"{NODE_IP}/{SUBNET_PREFIXLEN}", "dev", "eth0")
        a.sql(SCHEMA)
        wait_for("the schema on b", lambda: self.servers["b"].sql(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='pbx'",
            check=False) == "1", 15)
        if timed:
            timed_applier(self.servers["b"])
        self.current = "a"
        return "a"

    @staticmethod
    def _change_to(master: Node) -> str:
        return (f"CHANGE MASTER TO MASTER_HOST='{NODE_ADDRESSES[master]}', MASTER_USER='repl', "
                "MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1")

    def master(self) -> Node:
        return self.current

    def _move_ip(self, old: Node | None, new: Node) -> None:
        if old is not None:
            self.lab.ip(old, "addr", "del", f"{NODE_IP}/{SUBNET_PREFIXLEN}", "dev", "eth0",
                        check=False)
        self.lab.ip(new, "addr", "add", f"{NODE_IP}/{SUBNET_PREFIXLEN}", "dev", "eth0")
        self.lab.nsexec(new, "arping", "-U", "-c", "1", "-I", "eth0", NODE_IP, check=False)

    def switchover(self, master: Node) -> None:
        old, new = self.servers[master], self.servers[other(master)]
        position = old.sql("SET GLOBAL read_only = 1; FLUSH TABLES WITH READ LOCK; "
                           "SELECT @@gtid_binlog_pos; UNLOCK TABLES").splitlines()[-1]
        new.sql(f"SELECT MASTER_GTID_WAIT('{position}', 10)")
        new.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0")
        self._move_ip(master, other(master))
        old.sql("SET GLOBAL gtid_slave_pos = @@gtid_current_pos; " + self._change_to(
            other(master)) + "; START SLAVE")
        self.current = other(master)

    def after_crash(self, master: Node) -> Node:
        time.sleep(1.0)  # the operator's script notices
        new = other(master)
        self.servers[new].sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0")
        self.lab.ip(new, "addr", "add", f"{NODE_IP}/{SUBNET_PREFIXLEN}", "dev", "eth0")
        self.lab.nsexec(new, "arping", "-U", "-c", "1", "-I", "eth0", NODE_IP, check=False)
        self.current = new
        return new


# --- voxnode -------------------------------------------------------------------------------


class VoxnodeDbPair:
    def __init__(self, lab: PairLab) -> None:
        self.pair = VoxnodePair(lab, extra_ha=EXTRA_HA)
        self.dbs = DbPair(self.pair)
        self.servers = self.dbs.servers

    def up(self, timed: bool) -> Node:
        master = self.pair.start(stagger_s=0.3)
        for node in NODES:
            self.dbs.start_server(node)
        self.dbs.wait_state(master, "master")
        self.dbs.wait_state(other(master), "replicating")
        self.servers[master].sql(SCHEMA)
        wait_for("the schema on the slave", lambda: self.servers[other(master)].sql(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='pbx'",
            check=False) == "1", 15)
        if timed:
            timed_applier(self.servers[other(master)])
        return master

    def master(self) -> Node:
        found = self.pair.master()
        if found is None:
            raise RuntimeError("no single master")
        return found

    def switchover(self, master: Node) -> None:
        self.pair.client(master, timeout=30).post("/v1/ha/switchover", {})
        wait_for(f"{other(master)} is master",
                 lambda: self.pair.role(other(master)) == "master", 15)
        self.dbs.wait_state(master, "replicating", 20)

    def after_crash(self, master: Node) -> Node:
        new = other(master)
        wait_for(f"{new} is master", lambda: self.pair.role(new) == "master", 15)
        self.dbs.wait_state(new, "master", 15)
        return new

    def stop(self) -> None:
        self.pair.stop()


@contextlib.contextmanager
def build(impl: str, timed: bool = False) -> Iterator[tuple[PairLab, Any, Node]]:
    """A fresh pair; ``timed``: the replica records when it applies each row (the lag
    case only: the records are the replica's own, so no role may move)."""
    with PairLab(assign_node_addresses=impl == "manual", probe=False, echo=False,
                 sample_vip=False) as lab:
        pair: Any = ManualPair(lab) if impl == "manual" else VoxnodeDbPair(lab)
        try:
            master = pair.up(timed)
            yield lab, pair, master
        finally:
            if impl != "manual":
                pair.stop()
            for server in pair.servers.values():
                server.kill()


# --- measurements --------------------------------------------------------------------------


@dataclass
class Result:
    impl: str
    case: str
    rate: int
    trial: int
    error: str | None = None
    acknowledged: int = 0
    lost: int = 0
    pause_ms: float | None = None
    lag_ms: dict[str, float] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def lags(server: DbServer, since_id: int) -> list[float]:
    text = server.sql("SELECT TIMESTAMPDIFF(MICROSECOND, c.at, a.at) FROM pbx.calls c "
                      f"JOIN pbx.applied a ON a.id = c.id WHERE c.id > {since_id}")
    return [int(x) / 1000 for x in text.split()]


def run_lag(impl: str, rate: int, duration: float) -> Result:
    result = Result(impl, "lag", rate, 0)
    try:
        with build(impl, timed=True) as (lab, pair, master):
            clients = max(1, rate // 25)  # a commit takes a few ms: one client per 25/s
            writer = Writer(lab, rate, clients=clients)
            time.sleep(1.0)  # warm up
            first = max(writer.acknowledged() or [0])
            time.sleep(duration)
            acked = writer.stop()
            result.acknowledged = len([a for a in acked if a > first])
            replica = pair.servers[other(master)]
            wait_for("the replica applies every row", lambda: replica.sql(
                f"SELECT COUNT(*) FROM pbx.calls WHERE id IN ({max(acked)})") == "1", 30)
            values = lags(replica, first)
            result.lag_ms = {"p50": round(percentile(values, 0.5), 2),
                             "p99": round(percentile(values, 0.99), 2),
                             "max": round(max(values), 2), "rows": len(values),
                             "achieved_rate": round(result.acknowledged / duration, 1)}
    except Exception as exc:  # a failed trial is reported, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    return result


def pause_around(acks: list[tuple[int, float]], at: float, window: float = 15.0) -> float:
    times = [t for _, t in acks if at - 1.0 <= t <= at + window]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return round(max(gaps) * 1000, 1) if gaps else float("nan")


def run_switchovers(impl: str, trials: int, rate: int) -> list[Result]:
    results = []
    try:
        with build(impl) as (lab, pair, master):
            for trial in range(trials):
                result = Result(impl, "switchover", rate, trial)
                try:
                    writer = Writer(lab, rate, clients=max(1, rate // 50))
                    time.sleep(1.5)
                    at = time.monotonic()
                    pair.switchover(master)
                    master = other(master)
                    time.sleep(1.5)
                    acked = writer.stop()
                    present = {int(x) for x in pair.servers[master].sql(
                        "SELECT id FROM pbx.calls").split()}
                    result.acknowledged = len(acked)
                    result.lost = len(set(acked) - present)
                    result.pause_ms = pause_around(writer.acks(), at)
                except Exception as exc:
                    result.error = f"{type(exc).__name__}: {exc}"[:300]
                results.append(result)
                print(f"switchover {impl:<8} #{trial}: " + (
                    f"lost {result.lost} of {result.acknowledged}, pause {result.pause_ms} ms"
                    if result.error is None else f"failed: {result.error}"), flush=True)
                if result.error is not None:
                    break
    except Exception as exc:
        results.append(Result(impl, "switchover", rate, len(results),
                              error=f"{type(exc).__name__}: {exc}"[:300]))
    return results


def run_crash(impl: str, trial: int, rate: int) -> Result:
    result = Result(impl, "crash", rate, trial)
    try:
        with build(impl) as (lab, pair, master):
            writer = Writer(lab, rate, clients=max(1, rate // 50))
            time.sleep(2.0)
            at = lab.crash(master)
            new = pair.after_crash(master)
            time.sleep(1.0)
            acked = writer.stop()
            present = {int(x) for x in pair.servers[new].sql("SELECT id FROM pbx.calls").split()}
            result.acknowledged = len(acked)
            result.lost = len(set(acked) - present)
            result.pause_ms = pause_around(writer.acks(), at)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    return result


# --- files: a new 1 MB file on the slave ---------------------------------------------------

LSYNCD_CONF = """settings {{ nodaemon = true, logfile = "{log}", statusFile = "{status}" }}
sync {{
  default.rsync, source = "{source}", target = "{target}", delay = 1,
  rsync = {{ archive = true, rsh = "/usr/bin/ssh -i {key} -p 7422 -o BatchMode=yes \
-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null" }}
}}
"""
ANCHOR_SSHD = """ListenAddress {address}:7422
HostKey {host_key}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PasswordAuthentication no
StrictModes no
PidFile none
"""


@contextlib.contextmanager
def file_pair(impl: str) -> Iterator[tuple[PairLab, Path, Path]]:
    """A fresh pair syncing one path: the source on the master and the target on the
    slave (host paths)."""
    from lab.pair.filepair import EXTRA_HA as FILE_HA
    from lab.pair.filepair import FilePair

    with PairLab(assign_node_addresses=impl == "manual", probe=False, echo=False,
                 sample_vip=False) as lab:
        if impl != "manual":
            pair = FilePair(VoxnodePair(lab, extra_ha=FILE_HA))
            try:
                master = pair.start()
                yield lab, pair.at(master, "/srv/rec"), pair.at(other(master), "/srv/rec")
            finally:
                pair.stop()
            return
        base = lab.workdir
        source, target = base / "a-rec", base / "b-rec"
        source.mkdir()
        target.mkdir()
        key = base / "lsyncd_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        host = base / "anchor_host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host)],
                       check=True)
        (base / "authorized").write_text(key.with_suffix(".pub").read_text()
                                         if key.with_suffix(".pub").exists()
                                         else Path(f"{key}.pub").read_text())
        (base / "anchor_sshd").write_text(ANCHOR_SSHD.format(
            address=NODE_ADDRESSES["b"], host_key=host, authorized=base / "authorized"))
        Path("/run/sshd").mkdir(exist_ok=True)
        sshd = subprocess.Popen(["ip", "netns", "exec", lab.ns["b"], "/usr/sbin/sshd", "-D",
                                 "-e", "-f", str(base / "anchor_sshd")],
                                stderr=(base / "anchor_sshd.log").open("wb"))
        (base / "lsyncd.conf").write_text(LSYNCD_CONF.format(
            log=base / "lsyncd.log", status=base / "lsyncd.status", source=source,
            target=f"{NODE_ADDRESSES['b']}:{target}", key=key))
        lsyncd = subprocess.Popen(["ip", "netns", "exec", lab.ns["a"], "/usr/bin/lsyncd",
                                   str(base / "lsyncd.conf")], stdout=subprocess.DEVNULL,
                                  stderr=(base / "lsyncd.err").open("wb"))
        try:
            (source / "ready").write_text("x")
            wait_for("lsyncd's first sync", lambda: (target / "ready").exists(), 30, lambda: (
                (base / "lsyncd.err").read_text()[-300:] + " | "
                + (base / "anchor_sshd.log").read_text()[-300:]))
            yield lab, source, target
        finally:
            lsyncd.kill()
            sshd.kill()


def run_files(impl: str, trials: int) -> Result:
    result = Result(impl, "files", 0, 0)
    try:
        with file_pair(impl) as (_, source, target):
            latencies = []
            for i in range(trials):
                blob = os.urandom(FILE_BYTES)
                name = f"call-{i}.wav"
                started = time.monotonic()
                (source / name).write_bytes(blob)
                arrived = target / name
                deadline = started + 30
                while time.monotonic() < deadline:
                    with contextlib.suppress(OSError):
                        if arrived.stat().st_size == FILE_BYTES and arrived.read_bytes() == blob:
                            break
                    time.sleep(0.002)
                else:
                    raise RuntimeError(f"{name} did not reach the slave within 30 s")
                latencies.append((time.monotonic() - started) * 1000)
                time.sleep(0.3)
            result.lag_ms = {"p50": round(percentile(latencies, 0.5), 1),
                             "p99": round(percentile(latencies, 0.99), 1),
                             "max": round(max(latencies), 1), "rows": len(latencies),
                             "achieved_rate": 0.0}
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    return result


def _step_s(step: dict[str, Any]) -> float:
    return float(step["finished"]) - float(step["started"])


def run_fullsync(impl: str) -> Result:
    """One full sync of a slave that lacks everything (its sync daemon down while the data
    was made, so nothing was pushed; replication stopped by hand): KiB/s per part."""
    from lab.pair.fullpair import sync_pair

    result = Result(impl, "fullsync", 0, 0)
    try:
        with sync_pair(bandwidth_kb=FULLSYNC_KB) as both:
            master = both.up()
            slave = other(master)
            both.files.sshd[slave].kill()
            mdb, sdb = both.db.server(master), both.db.server(slave)
            sdb.sql("STOP SLAVE")
            mdb.sql("CREATE TABLE pbx.blob (id INT PRIMARY KEY, b LONGBLOB)")
            for i in range(FULLSYNC_DB_MB * 4):
                mdb.sql(f"INSERT INTO pbx.blob VALUES ({i}, REPEAT('z', 262144))")
            files_bytes = 0
            for i in range(FULLSYNC_FILES_MB // 4):
                blob = os.urandom(4 * 1024 * 1024)
                (both.files.at(master, "/srv/rec") / f"call-{i}.wav").write_bytes(blob)
                files_bytes += len(blob)
            dump = subprocess.run(
                ["ip", "netns", "exec", both.pair.lab.ns[master], labdb.CLIENT.replace(
                    "mariadb", "mariadb-dump"), f"--socket={mdb.socket}",
                 "--single-transaction", "--skip-extended-insert", "--hex-blob",
                 "--databases", "pbx"], capture_output=True, timeout=300, check=True).stdout
            if impl == "manual":
                started = time.monotonic()
                subprocess.run(["ip", "netns", "exec", both.pair.lab.ns[slave], labdb.CLIENT,
                                f"--socket={sdb.socket}", "--init-command=SET SESSION "
                                "sql_log_bin=0"], input=dump, timeout=600, check=True,
                               capture_output=True)
                db_s = time.monotonic() - started
                target = both.pair.lab.workdir / "anchor-rec"
                started = time.monotonic()
                subprocess.run(["rsync", "-rlptgo", f"--bwlimit={FULLSYNC_KB}",
                                f"{both.files.at(master, '/srv/rec')}/", f"{target}/"],
                               timeout=600, check=True, capture_output=True)
                files_s = time.monotonic() - started
            else:
                job = both.start_sync(slave)
                ended, _ = both.follow(slave, job["id"], timeout=600)
                if ended["state"] != "succeeded":
                    raise RuntimeError(f"the full sync {ended['state']}: {ended['error']}")
                db, files = ended["steps"][1], ended["steps"][2]
                result.throughput = {
                    "db_step_s": round(_step_s(db), 2), "files_step_s": round(_step_s(files), 2),
                    "files_step_kib_s": round(files_bytes / 1024 / _step_s(files), 1)}
                # the transfers themselves (the dump's stream; rsync from its first byte)
                db_s = float(db["details"]["seconds"])
                files_s = files_bytes / 1024 / float(files["details"]["transfer_kib_s"])
            limit = float(FULLSYNC_KB)
            result.throughput |= {
                "limit_kib_s": limit, "db_bytes": len(dump), "files_bytes": files_bytes,
                "db_kib_s": round(len(dump) / 1024 / db_s, 1),
                "files_kib_s": round(files_bytes / 1024 / files_s, 1),
                "db_s": round(db_s, 2), "files_s": round(files_s, 2)}
            result.throughput["db_vs_limit_pct"] = round(
                100 * (result.throughput["db_kib_s"] - limit) / limit, 1)
            result.throughput["files_vs_limit_pct"] = round(
                100 * (result.throughput["files_kib_s"] - limit) / limit, 1)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    return result


# --- report --------------------------------------------------------------------------------


def report(results: list[Result], impls: list[str]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    print("\n| implementation | case | rows/s | measure | value |")
    print("|---|---|---|---|---|")
    for impl in impls:
        mine = [r for r in results if r.impl == impl and r.error is None]
        for r in [r for r in mine if r.case == "lag"]:
            stats.setdefault(impl, {})[f"lag_{r.rate}"] = r.lag_ms
            print(f"| {impl} | lag | {r.rate} (achieved {r.lag_ms['achieved_rate']}) | "
                  f"p50 / p99 / max | {r.lag_ms['p50']} / {r.lag_ms['p99']} / "
                  f"{r.lag_ms['max']} ms |")
        for r in [r for r in mine if r.case == "files"]:
            stats.setdefault(impl, {})["new_1mb_file_ms"] = r.lag_ms
            print(f"| {impl} | files x{r.lag_ms['rows']} | - | new 1 MB file on the slave "
                  f"p50 / p99 / max | {r.lag_ms['p50']} / {r.lag_ms['p99']} / "
                  f"{r.lag_ms['max']} ms |")
        for r in [r for r in mine if r.case == "fullsync"]:
            t = r.throughput
            stats.setdefault(impl, {})["fullsync"] = t
            print(f"| {impl} | fullsync database | - | KiB/s (limit {t['limit_kib_s']:g}) | "
                  f"{t['db_kib_s']} ({t['db_vs_limit_pct']:+} %) |")
            print(f"| {impl} | fullsync files | - | KiB/s (limit {t['limit_kib_s']:g}) | "
                  f"{t['files_kib_s']} ({t['files_vs_limit_pct']:+} %) |")
            if "files_step_kib_s" in t:
                print(f"| {impl} | fullsync files step | - | KiB/s with ssh set-up and the "
                      f"final count | {t['files_step_kib_s']} ({t['files_step_s']} s) |")
        for case in ("switchover", "crash"):
            done = [r for r in mine if r.case == case]
            if not done:
                continue
            lost = sum(r.lost for r in done)
            acked = sum(r.acknowledged for r in done)
            pauses = [r.pause_ms for r in done if r.pause_ms is not None]
            entry = {"trials": len(done), "acknowledged": acked, "lost": lost,
                     "pause_ms_p50": round(statistics.median(pauses), 1) if pauses else None,
                     "pause_ms_p95": round(percentile(pauses, 0.95), 1) if pauses else None}
            stats.setdefault(impl, {})[case] = entry
            print(f"| {impl} | {case} x{len(done)} | {done[0].rate} | acknowledged rows "
                  f"lost | {lost} of {acked} |")
            if pauses:
                print(f"| {impl} | {case} x{len(done)} | {done[0].rate} | write pause "
                      f"p50 / p95 | {entry['pause_ms_p50']} / {entry['pause_ms_p95']} ms |")
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"failed: {r.impl} {r.case} #{r.trial}: {r.error}")
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/replication",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--impl", default="voxnode,manual")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="writes/s for switchover, crash")
    parser.add_argument("--json-out", type=Path, default=REPO / "out/bench/replication.json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/replication: needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = labdb.missing_tools()
    if missing:
        print(f"bench/replication: MariaDB missing: {', '.join(missing)} (make apt)",
              file=sys.stderr)
        return 2
    impls = [i.strip() for i in args.impl.split(",") if i.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [i for i in impls if i not in ("voxnode", "manual")] + [
        c for c in cases if c not in CASES]
    if unknown:
        print(f"bench/replication: unknown {', '.join(unknown)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    results: list[Result] = []
    for case in cases:
        for impl in impls:
            if case == "lag":
                for rate in LAG_RATES:
                    r = run_lag(impl, rate, args.lag_seconds)
                    results.append(r)
                    print(f"lag {impl:<8} {rate}/s: " + (
                        f"p50 {r.lag_ms['p50']} ms, p99 {r.lag_ms['p99']} ms "
                        f"({r.lag_ms['achieved_rate']}/s achieved)" if r.error is None
                        else f"failed: {r.error}"), flush=True)
            elif case == "switchover":
                results += run_switchovers(impl, args.trials, args.rate)
            elif case == "fullsync":
                r = run_fullsync(impl)
                results.append(r)
                print(f"fullsync {impl:<8}: " + (
                    f"database {r.throughput['db_kib_s']} KiB/s, files "
                    f"{r.throughput['files_kib_s']} KiB/s (limit {FULLSYNC_KB})"
                    if r.error is None else f"failed: {r.error}"), flush=True)
            elif case == "files":
                r = run_files(impl, max(20, args.trials * 2))
                results.append(r)
                print(f"files {impl:<8}: " + (
                    f"new 1 MB file p50 {r.lag_ms['p50']} ms, p99 {r.lag_ms['p99']} ms"
                    if r.error is None else f"failed: {r.error}"), flush=True)
            else:
                for trial in range(args.trials):
                    r = run_crash(impl, trial, args.rate)
                    results.append(r)
                    print(f"crash {impl:<8} #{trial}: " + (
                        f"lost {r.lost} of {r.acknowledged}, pause {r.pause_ms} ms"
                        if r.error is None else f"failed: {r.error}"), flush=True)
    stats = report(results, impls)
    out = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "mariadb": labdb.server_version()},
        "args": {"impl": impls, "cases": cases, "trials": args.trials,
                 "lag_seconds": args.lag_seconds, "rate": args.rate},
        "duration_s": round(time.monotonic() - started, 1),
        "stats": stats,
        "results": [asdict(r) for r in results],
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json_out}")
    return 1 if any(r.error for r in results) else 0
