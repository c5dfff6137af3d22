"""The forced full sync (ha/replication/fullsync.py): real agents, real MariaDB servers, the
sync daemon each agent configured (real sshd, the sync shell), rsync.

Tried here: a slave whose database and files drifted from the master's (a database only
it has, files the master lacks, files missing or changed) while the master takes writes
during the copy; the request on the master; the progress as an operator polls it (never
backwards, ending at 100); a cancel during the database copy and during the file copy
(the node stays marked, does not replicate on top of a half-copied database, pushes
resume); the master's sync daemon dying half-way (the job fails with a sentence, the node
stays marked); then a full sync that puts it all right.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.errors import Conflict
from lab.pair import mariadb as labdb
from lab.pair.dbpair import Writer, wait_for
from lab.pair.fullpair import PATHS, SyncPair, sync_pair
from lab.pair.topology import Node, other
from lab.pair.voxnode import BIN
from tests.netns.pairs import codes, lab_or_skip

pytestmark = pytest.mark.root

@contextlib.contextmanager
def both_pair(bandwidth_kb: int = 100000) -> Iterator[SyncPair]:
    lab_or_skip()
    missing = labdb.missing_tools()
    if missing:
        pytest.skip(f"MariaDB missing: {', '.join(missing)} (make apt)")
    with sync_pair(bandwidth_kb) as pair:
        yield pair


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".voxnode-partial" not in p.parts}


def test_a_drifted_slave_is_made_the_masters_copy_while_the_master_writes() -> None:
    with both_pair() as both:
        master = both.up()
        slave = other(master)
        mdb, sdb = both.db.server(master), both.db.server(slave)
        mdb.sql("INSERT INTO pbx.calls (seq) SELECT seq FROM (SELECT 1 seq UNION SELECT 2 "
                "UNION SELECT 3) t")
        mdb.sql("CREATE TABLE pbx.empty (id INT PRIMARY KEY)")
        mdb.sql("CREATE TABLE pbx.odd (id INT PRIMARY KEY, v TEXT)")
        mdb.sql("INSERT INTO pbx.odd VALUES (1, 'a\\nINSERT INTO `x` VALUES (1)'), "
                "(2, 'it''s; DROP TABLE calls; \\\\! touch /tmp/vx'), (3, NULL)")
        wait_for("the slave has the rows", lambda: sdb.sql(
            "SELECT COUNT(*) FROM pbx.odd", check=False) == "3", 15)
        # the slave drifts: a database only it has, rows it lacks (written around the
        # replica), files the master lacks, lacks, or holds otherwise
        sdb.sql("SET sql_log_bin=0; SET GLOBAL read_only=0; CREATE DATABASE stale; "
                "CREATE TABLE stale.t (id INT); INSERT INTO stale.t VALUES (7); "
                "STOP SLAVE; DELETE FROM pbx.calls WHERE seq = 2; SET GLOBAL read_only=1")
        # the master's pushes must not mend it meanwhile: the slave's daemon is down (the
        # full sync pulls through the master's)
        both.files.sshd[slave].kill()
        mrec, srec = both.files.at(master, "/srv/rec"), both.files.at(slave, "/srv/rec")
        (mrec / "2026/12").mkdir(parents=True)
        (mrec / "2026/12/call-1.wav").write_bytes(os.urandom(300_000))
        (mrec / "2026/12/call-2.wav").write_bytes(os.urandom(1000))
        (both.files.at(master, "/srv/vm") / "greeting.wav").write_bytes(b"hello" * 100)
        (srec / "only-here.wav").write_bytes(b"old")
        (srec / "2026/12").mkdir(parents=True)
        (srec / "2026/12/call-2.wav").write_bytes(b"x" * 1000)  # same size, other bytes
        os.utime(srec / "2026/12/call-2.wav", (0, 0))
        # on the master: refused, and says why
        with pytest.raises(Conflict) as refused:
            both.start_sync(master)
        assert "this node is master" in refused.value.message
        writer = Writer(both.pair.lab, rate=50)
        writer.wait_rows(20)
        job = both.start_sync(slave)
        assert job["params"] == {"what": "all"} and job["name"] == "full-sync"
        ended, seen = both.follow(slave, job["id"])
        assert ended["state"] == "succeeded", (ended["error"], ended["steps"])
        assert seen == sorted(seen), seen  # never backwards
        assert ended["progress"] == 100
        assert [s["state"] for s in ended["steps"]] == ["succeeded"] * 4
        writer.wait_rows(20)
        acked = writer.stop()
        # the database: the master's, and replicating from where the copy was taken
        wait_for("the slave replicates again", lambda: both.db.database(slave)["state"]
                 == "replicating", 20, lambda: both.db.database(slave))
        wait_for("the slave caught up", lambda: both.db.ids(slave) == both.db.ids(master), 20)
        assert set(acked) <= both.db.ids(slave)
        assert sdb.sql("SELECT COUNT(*) FROM pbx.calls WHERE seq = 2") == mdb.sql(
            "SELECT COUNT(*) FROM pbx.calls WHERE seq = 2")
        assert sdb.sql("SELECT v FROM pbx.odd WHERE id = 2") == mdb.sql(
            "SELECT v FROM pbx.odd WHERE id = 2")
        assert sdb.sql("SHOW DATABASES LIKE 'stale'") == ""
        assert not Path("/tmp/vx").exists()
        saved = list((both.pair.dir(slave) / "state/ha/saved").rglob("*.sql"))
        assert len(saved) == 1
        assert re.search(r"INSERT INTO `t` VALUES\s*\(7\)", saved[0].read_text())
        # what the slave wrote around its replica is not in its binary log any more
        assert both.db.database(slave)["server"]["read_only"] is True
        database_step = ended["steps"][1]["message"]
        assert "counts match the master's snapshot" in database_step, database_step
        assert "stale" in database_step
        # the files: the master's, byte for byte
        for path in PATHS:
            assert _tree(both.files.at(slave, path)) == _tree(both.files.at(master, path))
        assert "as on the master" in ended["steps"][2]["message"]
        repl = both.replication(slave)
        assert repl["needs_full_sync"] is False and repl["full_sync"]["needed"] is None
        assert "needs-full-sync" not in codes(both.pair.status(slave)["failover_blockers"])
        # pushes go on after it
        both.files.start_sshd(slave)
        (mrec / "after.wav").write_bytes(b"later")
        wait_for("a push after the full sync", lambda: (srec / "after.wav").exists(), 15)


def _cancel_during(both: SyncPair, node: Node, step: str) -> dict[str, Any]:
    job = both.start_sync(node)
    running, _ = both.follow(node, job["id"], until=lambda j: any(
        s["name"] == step and s["state"] == "running" and s["progress"] > 0
        for s in j["steps"]), timeout=60)
    assert running["state"] == "running", running
    cancelled: dict[str, Any] = both.pair.client(node).post(f"/v1/jobs/{job['id']}/cancel", {})
    return cancelled


def test_a_cancelled_or_broken_copy_leaves_the_slave_marked_until_one_succeeds() -> None:
    # 400 KiB/s: the copies below take seconds, long enough to cancel and to break
    with both_pair(bandwidth_kb=400) as both:
        master = both.up()
        slave = other(master)
        mdb = both.db.server(master)
        mdb.sql("CREATE TABLE pbx.blob (id INT PRIMARY KEY, b LONGBLOB)")
        for i in range(24):
            mdb.sql(f"INSERT INTO pbx.blob VALUES ({i}, REPEAT('z', 100000))")
        both.files.sshd[slave].kill()  # no pushes: the slave lacks the master's files
        (both.files.at(master, "/srv/rec") / "big.wav").write_bytes(os.urandom(3_000_000))
        wait_for("the slave has the blobs", lambda: both.db.server(slave).sql(
            "SELECT COUNT(*) FROM pbx.blob", check=False) == "24", 20)
        # cancelled in the database copy: the slave's databases are half replaced, so it
        # does not replicate on top of them, and it may not take over on its own
        cancelled = _cancel_during(both, slave, "database")
        assert cancelled["state"] == "cancelled", cancelled
        assert cancelled["error"].startswith("cancelled by the operator during step 2 of 4")
        assert [s["state"] for s in cancelled["steps"]] == [
            "succeeded", "cancelled", "skipped", "skipped"]
        assert cancelled["progress"] > 0  # what it reached, not 0
        db = both.db.wait_state(slave, "needs-full-sync")
        assert db["needs_full_sync"] is True
        status = both.pair.status(slave)
        assert {"needs-full-sync"} <= set(codes(status["failover_blockers"]))
        mdb.sql("INSERT INTO pbx.calls (seq) VALUES (42)")
        time.sleep(1.5)
        assert both.db.server(slave).sql("SELECT COUNT(*) FROM pbx.calls WHERE seq = 42",
                                         check=False) != "1"
        no_slave = both.db.server(slave).sql("SHOW SLAVE STATUS", check=False)
        assert "Yes\tYes" not in no_slave
        # and an agent restart keeps it so (the mark is on disk)
        both.pair.stop_node(slave)
        both.pair.start_node(slave)
        both.db.wait_state(slave, "needs-full-sync", timeout=20)
        # the master's sync daemon dies in the file copy: the job fails with a sentence
        job = both.start_sync(slave, "files")
        both.follow(slave, job["id"], until=lambda j: j["steps"][2]["state"]
                                 == "running" and j["steps"][2]["progress"] > 0, timeout=60)
        both.files.sshd[master].kill()
        senders = [p for p in psutil.process_iter(["cmdline"])
                   if {"--server", "--sender"} <= set(p.info["cmdline"] or [])
                   and any(str(both.files.at(master, "/srv")) in a
                           for a in p.info["cmdline"] or [])]
        assert senders, "no rsync sender on the master to break"
        for proc in senders:
            proc.kill()
        failed, _ = both.follow(slave, job["id"], timeout=60)
        assert failed["state"] == "failed", failed
        assert "copying /srv/rec failed" in failed["error"], failed["error"]
        assert "Traceback" not in json.dumps(failed), json.dumps(failed, indent=1)
        both.files.start_sshd(master)
        assert both.replication(slave)["needs_full_sync"] is True
        assert not (both.files.at(slave, "/srv/rec") / "big.wav").exists()
        # the pushes were paused for the copy and go on after it
        assert not (both.pair.dir(slave) / "root/run/voxnode/full-sync").exists()
        # cancelled in the file copy
        cancelled = _cancel_during(both, slave, "files")
        assert cancelled["state"] == "cancelled", cancelled
        assert both.replication(slave)["needs_full_sync"] is True
        # then one that finishes puts everything right and lifts the mark: the CLI's own
        # command, followed to its end (a bar, one line per step, exit 0)
        shown = subprocess.run([str(BIN / "voxnode"), "--socket", both.pair.socket(slave),
                                "ha", "full-sync", "--wait"], capture_output=True, text=True,
                               timeout=300, check=False)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "succeeded" in shown.stdout and "copy the database" in shown.stdout
        ended = both.pair.client(slave).get("/v1/jobs")["jobs"][0]
        assert ended["state"] == "succeeded", (ended["error"], ended["steps"])
        both.db.wait_state(slave, "replicating", timeout=20)
        wait_for("row 42 on the slave", lambda: both.db.server(slave).sql(
            "SELECT COUNT(*) FROM pbx.calls WHERE seq = 42", check=False) == "1", 20)
        assert both.replication(slave)["needs_full_sync"] is False
        assert (both.files.at(slave, "/srv/rec") / "big.wav").read_bytes() == (
            both.files.at(master, "/srv/rec") / "big.wav").read_bytes()
        both.files.start_sshd(slave)
        (both.files.at(master, "/srv/rec") / "after.wav").write_bytes(b"later")
        wait_for("pushes go on", lambda: (both.files.at(slave, "/srv/rec") / "after.wav")
                 .exists(), 15)
        # the limit held: 2.4 MB of rows and 3 MB of files at 400 KiB/s take over 10 s
        took = ended["finished"] - ended["started"]
        assert took > 10, took
