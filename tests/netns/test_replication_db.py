"""The database follows the pair (ha/replication/): real MariaDB servers, real agents.

Each node namespace runs a ``mariadbd`` started the way systemd would after the agent
wrote its drop-in (``lab.pair.mariadb``): the agent renders the settings and the TLS files
(the CA derived from the pair key) under its root, the server runs with them, and the
agent's follower makes the master writable and the slave a read-only replica over TLS. A
writer in the client namespace inserts rows through the node IP and logs each row the
server acknowledged (``lab.pair.dbwriter``); after a switchover or a crash every one of
them must be on the new master.

Tried here: a report user writing on the slave; a replica without the pair's certificate;
a switchover under 200 writes/s; a crash of the master under 200 writes/s with semi-
synchronous replication; the same crash after semi-synchronous replication fell back to
asynchronous (the slave must not take over on its own, and says which transactions may be
missing; ``set-state master --force`` takes the risk); the old master coming back with
the transactions nobody else has (it must stay read-only, not replicate, and ask for a
full sync).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import Conflict
from lab.pair import mariadb as labdb
from lab.pair.dbpair import DROP_IN, EXTRA_HA, DbPair, Writer, wait_for
from lab.pair.harness import PairLab
from lab.pair.topology import NODE_ADDRESSES, NODES, LabError, Node, other
from lab.pair.voxnode import BIN, VoxnodePair
from tests.netns.pairs import codes, lab_or_skip

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
@contextlib.contextmanager
def db_pair() -> Iterator[DbPair]:
    lab_or_skip()
    missing = labdb.missing_tools()
    if missing:
        pytest.skip(f"MariaDB missing: {', '.join(missing)} (make apt)")
    with PairLab(assign_node_addresses=False, probe=False) as lab:
        voxnode = VoxnodePair(lab, extra_ha=EXTRA_HA)
        dbs = DbPair(voxnode)
        try:
            yield dbs
        finally:
            voxnode.stop()
            for server in dbs.servers.values():
                server.kill()
        problems = voxnode.loop_problems()
        assert problems == [], "\n".join(problems)


@pytest.fixture
def dbs() -> Iterator[DbPair]:
    with db_pair() as pair:
        yield pair


def up(dbs: DbPair) -> Node:
    return dbs.up()


# --- the slave is a read-only replica, reached only with the pair's certificate -----------


def test_the_slave_replicates_read_only_over_tls(dbs: DbPair) -> None:
    master = up(dbs)
    slave = other(master)
    dbs.server(master).sql("INSERT INTO pbx.calls (seq) VALUES (1), (2), (3)")
    wait_for("3 rows on the slave", lambda: len(dbs.ids(slave)) == 3, 10)
    db = dbs.database(slave)
    assert db["settings_problem"] is None and dbs.database(master)["settings_problem"] is None
    assert db["server"]["read_only"] is True
    assert db["server"]["replica"]["master_host"] == NODE_ADDRESSES[master]
    assert dbs.database(master)["server"]["read_only"] is False
    assert dbs.database(master)["server"]["semi_sync_master"] is True
    # a report user reads on the slave and cannot write there
    slave_ip = NODE_ADDRESSES[slave]
    assert dbs.server(slave).sql("SELECT COUNT(*) FROM pbx.calls", user="report",
                                 password="report", host=slave_ip) == "3"
    with pytest.raises(LabError, match=r"read-only|read_only|1290"):
        dbs.server(slave).sql("INSERT INTO pbx.calls (seq) VALUES (9)", user="report",
                              password="report", host=slave_ip)
    # the replication link is TLS, and the account needs the pair's certificate
    cipher = dbs.server(master).sql(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER='voxnode_repl'")
    assert cipher == "1"
    assert dbs.server(master).sql(
        "SELECT ssl_type FROM mysql.user WHERE user='voxnode_repl'") == "X509"
    assert dbs.server(master).sql(
        "SELECT host FROM mysql.user WHERE user='voxnode_repl'") == slave_ip
    # the account's secret derives from the pair key: a client with it but no certificate
    # from the pair's CA is refused (the secret is in neither document nor log)
    from ha.protocol import parse_key
    from ha.replication.mariadb import replication_secret
    secret = replication_secret(parse_key(dbs.pair.key))
    refused = subprocess.run(
        ["ip", "netns", "exec", dbs.lab.ns[slave], "mariadb", "-N", "-B",
         f"--host={NODE_ADDRESSES[master]}", "--user=voxnode_repl", f"--password={secret}",
         "--ssl", "-e", "SELECT 1"], capture_output=True, text=True, timeout=20, check=False)
    assert refused.returncode != 0 and "Access denied" in refused.stderr, refused.stderr
    # what an operator reads
    repl = dbs.pair.client(slave).get("/v1/replication")
    assert (repl["role"], repl["database"]["state"], repl["needs_full_sync"]) == (
        "slave", "replicating", False)
    shown = subprocess.run([str(BIN / "voxnode"), "--socket", dbs.pair.socket(slave),
                            "replication", "status"], capture_output=True, text=True,
                           timeout=20, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "mariadb: replicating" in shown.stdout and "read-only" in shown.stdout
    assert f"read-only replica of {NODE_ADDRESSES[master]}" in shown.stdout
    for node in NODES:
        log = (dbs.pair.dir(node) / "agent.log").read_text()
        assert secret not in log
        assert secret not in (dbs.root(node) / DROP_IN).read_text()


# --- switchover and crash with a writer: no acknowledged row lost ---------------------------


def test_a_switchover_under_writes_loses_no_acknowledged_row(dbs: DbPair) -> None:
    master = up(dbs)
    slave = other(master)
    writer = Writer(dbs.lab)
    writer.wait_rows(200)
    dbs.pair.client(master, timeout=30).post("/v1/ha/switchover", {})
    wait_for(f"{slave} is master", lambda: dbs.pair.role(slave) == "master", 15)
    writer.wait_rows(200)
    acked = writer.stop()
    dbs.wait_state(master, "replicating")
    on_new_master = dbs.ids(slave)
    lost = set(acked) - on_new_master
    assert lost == set(), f"{len(lost)} acknowledged rows lost: {sorted(lost)[:10]}"
    wait_for("the old master has every row", lambda: dbs.ids(master) == on_new_master, 15)
    events = " ".join(step for e in dbs.pair.events(slave) for step in e.get("steps", []))
    assert "database: applied the old master's last transaction" in events


def test_a_crash_with_semi_sync_loses_no_acknowledged_row(dbs: DbPair) -> None:
    master = up(dbs)
    slave = other(master)
    assert dbs.database(master)["server"]["semi_sync_clients"] == 1
    writer = Writer(dbs.lab)
    writer.wait_rows(300)
    dbs.lab.crash(master)  # the agent, the database server, everything on the node
    wait_for(f"{slave} is master", lambda: dbs.pair.role(slave) == "master", 15)
    writer.wait_rows(100)
    acked = writer.stop()
    lost = set(acked) - dbs.ids(slave)
    assert lost == set(), f"{len(lost)} acknowledged rows lost: {sorted(lost)[:10]}"
    promotion = dbs.database(slave)["last_promotion"]
    assert promotion["ok"] is True, promotion


def block_replication(dbs: DbPair, slave: Node) -> None:
    """The slave can no longer reach the master's database port (the heartbeats still
    pass): the master's commits stop waiting for an acknowledgement."""
    dbs.lab.nsexec(slave, "nft", "-f", "-", stdin=(
        "table inet vxdb {\n  chain out {\n    type filter hook output priority 0;\n"
        "    tcp dport 3306 drop\n  }\n}\n"))
    dbs.server(slave).sql("STOP SLAVE; START SLAVE")  # drop the established connection


def test_after_a_fall_back_to_asynchronous_the_slave_does_not_take_over_alone(
        dbs: DbPair) -> None:
    master = up(dbs)
    slave = other(master)
    block_replication(dbs, slave)
    dbs.server(master).sql("INSERT INTO pbx.calls (seq) VALUES (1)")  # waits 1 s, then async
    wait_for("the master reports asynchronous commits",
             lambda: (dbs.pair.status(slave) or {}).get("peer", {}) is not None and any(
                 r["code"] == "replication-async"
                 for r in (dbs.pair.status(slave) or {}).get("failover_blockers", [])), 10,
             lambda: dbs.database(master))
    health = codes(dbs.pair.status(master)["health"])  # type: ignore[index]
    assert "replication-async" in health
    dbs.server(master).sql("INSERT INTO pbx.calls (seq) VALUES (2), (3)")
    time.sleep(1.0)  # the heartbeats carry the new position
    dbs.lab.crash(master)
    time.sleep(3.0)  # several dead intervals
    status = dbs.pair.status(slave)
    assert status is not None and status["role"] == "slave", status
    assert "fell back to asynchronous" in status["decision"]
    [risk] = [r for r in status["failover_blockers"] if r["code"] == "replication-async"]
    assert "may be missing" in risk["text"] and "--force" in risk["text"]
    assert dbs.lab.vip_holders() - set(dbs.lab.faults.crashed) == set()
    # without --force the operator is told why; with it the slave takes the role
    client = dbs.pair.client(slave, timeout=30)
    with pytest.raises(Conflict) as refused:
        client.post("/v1/ha/state", {"state": "master"})
    assert "asynchronous" in refused.value.message and refused.value.remedy
    client.post("/v1/ha/state", {"state": "master", "force": True})
    wait_for(f"{slave} is master", lambda: dbs.pair.role(slave) == "master", 10)
    dbs.wait_state(slave, "master")


def test_an_old_master_with_transactions_nobody_has_is_quarantined(dbs: DbPair) -> None:
    master = up(dbs)
    slave = other(master)
    block_replication(dbs, slave)
    dbs.server(master).sql("INSERT INTO pbx.calls (seq) VALUES (1)")
    dbs.server(master).sql("INSERT INTO pbx.calls (seq) VALUES (2), (3), (4)")
    extra = dbs.ids(master) - dbs.ids(slave)
    assert len(extra) == 4
    dbs.lab.crash(master)
    time.sleep(2.0)
    dbs.pair.client(slave, timeout=30).post("/v1/ha/state", {"state": "master", "force": True})
    wait_for(f"{slave} is master", lambda: dbs.pair.role(slave) == "master", 10)
    dbs.wait_state(slave, "master")
    dbs.server(slave).sql("INSERT INTO pbx.calls (seq) VALUES (100)")
    # the old master comes back: its agent and its server, with the 4 rows nobody else has
    dbs.lab.revive(master)
    dbs.lab.nsexec(slave, "nft", "delete", "table", "inet", "vxdb")
    dbs.pair.start_node(master)
    dbs.start_server(master, install=False)
    wait_for(f"{master} is slave", lambda: dbs.pair.role(master) == "slave", 15)
    db = dbs.wait_state(master, "diverged")
    assert db["needs_full_sync"] is True
    # the two inserts nobody else has, or the second alone when the first still reached
    # the slave before the cut took hold
    assert re.search(r"\((1 transaction|2 transactions)\)", db["diverged"]), db
    assert db["server"]["read_only"] is True
    assert db["server"]["replica"] is None or db["server"]["replica"]["io_running"] == "No"
    assert 100 not in {int(x) for x in dbs.server(master).sql(
        "SELECT seq FROM pbx.calls").split()}  # it did not replicate on top of its own
    kinds = [e["kind"] for e in dbs.pair.client(master).get("/v1/events")["events"]]
    assert "replication.database-diverged" in kinds
    # what only it has is saved under its state directory (mariadb-binlog, decoded rows)
    wait_for("the diverged transactions are saved",
             lambda: dbs.database(master)["diverged_saved"] is not None, 15,
             lambda: [e["message"] for e in dbs.pair.client(master).get("/v1/events")["events"]
                      if "sav" in e["kind"]])
    saved = Path(dbs.database(master)["diverged_saved"])
    assert saved.is_relative_to(dbs.pair.dir(master) / "state")
    text = saved.read_text()
    # every transaction the quarantine names, decoded (0-S-7 or 0-S-7..9)
    named = db["diverged"].split(" (")[0]
    for part in named.split(", "):
        domain, server, seqs = part.split("-", 2)
        first, _, last = seqs.partition("..")
        for seq in range(int(first), int(last or first) + 1):
            assert f"GTID {domain}-{server}-{seq} trans" in text, (part, text[-2000:])
    assert "### INSERT INTO `pbx`.`calls`" in text
    assert "@2=100" not in text  # the new master's row is not its own
    # a full sync makes it the new master's replica again; its own rows stay in the file
    from lab.pair.filepair import FilePair
    daemons = FilePair(dbs.pair)
    for node in NODES:
        daemons.start_sshd(node)
    try:
        job = dbs.pair.client(master).post("/v1/ha/full-sync", {"what": "db"})
        wait_for("the full sync ends", lambda: dbs.pair.client(master).get(
            f"/v1/jobs/{job['id']}")["state"] not in ("scheduled", "running"), 60)
        ended = dbs.pair.client(master).get(f"/v1/jobs/{job['id']}")
        assert ended["state"] == "succeeded", ended
        assert str(saved) in ended["steps"][1]["message"]
        dbs.wait_state(master, "replicating", timeout=20)
        dbs.server(slave).sql("INSERT INTO pbx.calls (seq) VALUES (101)")
        wait_for("the old master replicates the new one", lambda: dbs.ids(master)
                 == dbs.ids(slave), 20)
        assert dbs.database(master)["diverged"] is None
        assert dbs.database(master)["needs_full_sync"] is False
    finally:
        for proc in daemons.sshd.values():
            proc.kill()


def test_a_replica_stopped_on_an_error_says_so_and_a_switchover_is_refused(
        dbs: DbPair) -> None:
    """A row the slave cannot apply (a local row in its way) stops its applier: the slave
    says why, is not offered as a switchover target, and a crash of the master opens it
    for writes saying which transactions it could not apply."""
    master = up(dbs)
    slave = other(master)
    dbs.server(slave).sql("SET SESSION sql_log_bin = 0; "
                          "INSERT INTO pbx.calls (id, seq) VALUES (5000, 0)")
    dbs.server(master).sql("INSERT INTO pbx.calls (id, seq) VALUES (5000, 1), (5001, 2)")
    db = dbs.wait_state(slave, "failing")
    assert "applying the master's transactions failed" in db["detail"]
    assert "Duplicate entry" in db["detail"], db["detail"]
    repl = dbs.pair.client(slave).get("/v1/replication")
    assert repl["database"]["state"] == "failing"
    health = codes(dbs.pair.status(slave)["health"])  # type: ignore[index]
    assert "database-failing" in health
    wait_for("the master hears that the slave does not replicate", lambda: (
        dbs.pair.status(master) or {}).get("peer", {}).get("role") == "slave", 5)
    time.sleep(1.0)  # a heartbeat or two with the slave's new state
    with pytest.raises(Conflict) as refused:
        dbs.pair.client(master, timeout=30).post("/v1/ha/switchover", {})
    assert "not replicating from this node" in refused.value.message
    assert dbs.pair.role(master) == "master"
    # a crash now: the slave takes over (semi-synchronous: the rows reached its relay log),
    # opens for writes at once rather than wait for an applier that cannot go on, and says so
    dbs.lab.crash(master)
    wait_for(f"{slave} is master", lambda: dbs.pair.role(slave) == "master", 15)
    db = dbs.wait_state(slave, "master")
    promotion = db["last_promotion"]
    # the loss is named: as the applier's error, or (when the applier was being started
    # again at that moment) as the master's transactions beyond what this node applied
    assert promotion["ok"] is True and promotion["missing"], promotion
    assert ("the applier stopped on an error" in promotion["missing"]
            or "(1 transaction)" in promotion["missing"]), promotion
    assert promotion["took_ms"] < 5000, promotion
    if "the applier stopped on an error" in promotion["missing"]:
        kinds = [e["kind"] for e in dbs.pair.client(slave).get("/v1/events")["events"]]
        assert "replication.database-opened-incomplete" in kinds


def test_a_server_without_the_pairs_settings_is_reported(dbs: DbPair) -> None:
    """A server started without the binary log (an edited drop-in, a package's defaults)
    cannot be a master: the agent says which settings are wrong and how to fix it."""
    master = up(dbs)
    slave = other(master)
    server = dbs.server(slave)
    server.stop()
    server.drop_in = "\n".join(line for line in server.drop_in.splitlines()
                               if not line.startswith(("log_bin", "log_slave_updates")))
    server.start()
    wait_for("the settings problem is reported", lambda: (dbs.database(slave) or {}).get(
        "settings_problem") is not None, 15, lambda: dbs.database(slave))
    problem = dbs.database(slave)["settings_problem"]
    assert "log_bin is OFF (wanted ON)" in problem and "restart it" in problem
    assert "database-settings" in codes(dbs.pair.status(slave)["health"])  # type: ignore[index]


def test_a_replica_whose_server_restarted_replicates_again_at_once(dbs: DbPair) -> None:
    """A server starts without replication (skip_slave_start): the agent starts it again
    as soon as it sees the server back, not after a back-off."""
    master = up(dbs)
    slave = other(master)
    dbs.server(slave).stop()
    dbs.server(slave).start()
    dbs.server(master).sql("INSERT INTO pbx.calls (seq) VALUES (42)")
    wait_for("the row on the restarted slave", lambda: "42" in dbs.server(slave).sql(
        "SELECT seq FROM pbx.calls", check=False).split(), 8, lambda: dbs.database(slave))
    assert dbs.database(slave)["state"] == "replicating"
    kinds = [e["kind"] for e in dbs.pair.client(slave).get("/v1/events")["events"]]
    assert "replication.database-restarted" in kinds or "replication.database-unreachable" in kinds


# --- what once broke it (a review's findings, kept as tests) -------------------------------


def test_a_rekey_keeps_the_replica(dbs: DbPair) -> None:
    """A new pair key renews the TLS files and the account's secret: nothing of it may land
    in the binary log (a FLUSH SSL logged under the slave's own id once made it look
    diverged)."""
    master = up(dbs)
    slave = other(master)
    key = dbs.pair.client(master, timeout=30).post("/v1/ha/pair-key", {"generate": True})["key"]
    dbs.pair.client(slave, timeout=30).post("/v1/ha/pair-key", {"key": key})
    dbs.server(master).sql("INSERT INTO pbx.calls (seq) VALUES (7)")
    wait_for("the row after the rekey", lambda: "7" in dbs.server(slave).sql(
        "SELECT seq FROM pbx.calls").split(), 20, lambda: dbs.database(slave))
    for node in NODES:
        db = dbs.database(node)
        assert db["diverged"] is None and db["needs_full_sync"] is False, db
    own = dbs.server(slave).sql("SELECT @@server_id")
    assert f"-{own}-" not in dbs.server(slave).sql("SELECT @@gtid_binlog_pos")


def test_a_master_whose_follower_restarts_does_not_make_its_replica_diverge(
        dbs: DbPair) -> None:
    """A change of ha.replication on the master starts its database follower again (it no
    longer knows where it opened): the replica must not take that for a divergence."""
    master = up(dbs)
    slave = other(master)
    dbs.pair.client(master, timeout=30).post("/v1/ha/switchover", {})
    wait_for(f"{slave} is master", lambda: dbs.pair.role(slave) == "master", 15)
    dbs.wait_state(master, "replicating", 20)
    new_master, replica = slave, master
    document = dbs.pair.client(new_master).get("/v1/config")["document"]
    document["ha"]["replication"]["max_lag_s"] = 6
    dbs.pair.client(new_master, timeout=30).post("/v1/config/apply", {"document": document})
    time.sleep(3.0)
    db = dbs.database(replica)
    assert db["state"] == "replicating" and db["diverged"] is None, db


def test_a_switchover_to_a_lagging_slave_is_refused(dbs: DbPair) -> None:
    """A slave whose applier is held up (a read lock, as a dump takes) lags past the limit:
    it is not offered as a switchover target, and no acknowledged row is lost."""
    master = up(dbs)
    slave = other(master)
    holder = subprocess.Popen(
        ["ip", "netns", "exec", dbs.lab.ns[slave], "mariadb", "-N", "-B",
         f"--socket={dbs.server(slave).socket}", "-e",
         "LOCK TABLES pbx.calls READ; SELECT SLEEP(15)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        writer = Writer(dbs.lab, 50)
        wait_for("the slave lags past its limit", lambda: dbs.database(slave)["state"]
                 == "lagging", 15, lambda: dbs.database(slave))
        time.sleep(1.0)  # its heartbeats say so
        with pytest.raises(Conflict) as refused:
            dbs.pair.client(master, timeout=30).post("/v1/ha/switchover", {})
        assert "not replicating from this node" in refused.value.message
        assert dbs.pair.role(master) == "master"
    finally:
        holder.kill()
        holder.wait()
    acked = writer.stop()
    wait_for("the slave catches up", lambda: set(acked) <= dbs.ids(slave), 20)
