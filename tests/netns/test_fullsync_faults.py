"""Full sync under faults and odd sequences (real agents, MariaDB, sshd, rsync):

- a database copy cancelled half-way, then a files-only full sync that succeeds: the
  node must stay marked (its database is still half replaced), across a restart too;
- a full sync that fails in its first step must not leave the node believing one runs
  (``set-state master --force`` must still be possible on the slave);
- a master whose schema uses ordinary MariaDB features (an INVISIBLE column, a trigger,
  a routine whose statement spans lines) can be copied.
"""

from __future__ import annotations

import json
import time

import pytest

from agent.errors import Conflict
from lab.pair.dbpair import wait_for
from lab.pair.topology import other
from tests.netns.test_replication_fullsync import _cancel_during, both_pair

pytestmark = pytest.mark.root


def test_a_files_only_sync_after_a_cancelled_database_copy_keeps_the_node_marked() -> None:
    with both_pair(bandwidth_kb=400) as both:
        master = both.up()
        slave = other(master)
        mdb, sdb = both.db.server(master), both.db.server(slave)
        mdb.sql("CREATE TABLE pbx.blob (id INT PRIMARY KEY, b LONGBLOB)")
        for i in range(24):
            mdb.sql(f"INSERT INTO pbx.blob VALUES ({i}, REPEAT('z', 100000))")
        wait_for("the slave has the blobs", lambda: sdb.sql(
            "SELECT COUNT(*) FROM pbx.blob", check=False) == "24", 20)
        cancelled = _cancel_during(both, slave, "database")
        assert cancelled["state"] == "cancelled", cancelled
        both.db.wait_state(slave, "needs-full-sync")
        half = sdb.sql("SELECT COUNT(*) FROM pbx.blob", check=False)
        marker = both.pair.dir(slave) / "state/ha/full-sync.json"
        assert json.loads(marker.read_text())["database_incomplete"] is True
        # the operator copies the files only
        job = both.start_sync(slave, "files")
        ended, _ = both.follow(slave, job["id"], timeout=120)
        assert ended["state"] == "succeeded", ended
        repl = both.replication(slave)
        print("after the files-only sync: marker exists:", marker.exists(),
              "needs_full_sync:", repl["needs_full_sync"], "| slave's pbx.blob rows:", half)
        # the database is still half replaced: the node stays marked, on disk too
        lost = not marker.exists()
        both.pair.stop_node(slave)
        both.pair.start_node(slave)
        time.sleep(5)
        state = both.db.database(slave)["state"]
        blockers = both.pair.status(slave)["failover_blockers"]
        print("after a restart: database", state, "| blockers:", blockers,
              "| slave's pbx.blob rows:", sdb.sql("SELECT COUNT(*) FROM pbx.blob", check=False),
              "| SHOW SLAVE STATUS running:", "Yes\tYes" in sdb.sql("SHOW SLAVE STATUS",
                                                                  check=False))
        assert not lost, "the mark of the half-replaced database is gone"
        assert state == "needs-full-sync", state


def test_a_full_sync_failed_in_its_check_does_not_block_a_forced_takeover() -> None:
    with both_pair() as both:
        master = both.up()
        slave = other(master)
        both.files.sshd[master].kill()  # the master cannot be measured: the check fails
        job = both.start_sync(slave, "db")
        ended, _ = both.follow(slave, job["id"], timeout=60)
        assert ended["state"] == "failed", ended
        running = both.replication(slave)["full_sync"]["running_job"]
        print("after the failed job: running_job =", running)
        both.pair.lab.crash(master)
        wait_for("the slave hears no master", lambda: not ((both.pair.status(slave) or {})
                 .get("peer") or {}).get("reachable"), 20)
        try:
            both.pair.client(slave).post("/v1/ha/state", {"state": "master", "force": True})
        except Conflict as exc:
            pytest.fail(f"set-state master --force refused after a failed full sync: {exc}")
        assert running is None, running


def test_a_master_with_ordinary_schema_features_can_be_copied() -> None:
    with both_pair() as both:
        master = both.up()
        slave = other(master)
        mdb = both.db.server(master)
        mdb.sql("CREATE TABLE pbx.inv (id INT PRIMARY KEY, secret INT INVISIBLE DEFAULT 7); "
                "INSERT INTO pbx.inv (id) VALUES (1),(2),(3)")
        job = both.start_sync(slave, "db")
        ended, _ = both.follow(slave, job["id"], timeout=120)
        assert ended["state"] == "succeeded", ended["error"]
