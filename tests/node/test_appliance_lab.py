"""`make lab` (`voxnode-lab up`) gives the appliance: a licensed pair serving the node IP.

This module brings the lab up without ``--standalone`` itself (the rest of the node tier
runs on ``up --standalone``'s bare nodes, the package's ``lab_up``): first ``lab down``,
then ``lab up``; at the end the standalone lab again when later tests of the session use
it, else ``lab down`` checked like the tier's own teardown. Checked:

- both nodes licensed ACTIVE through the lab's licence server (one serial each, the codes
  emailed to the lab's mail sink), working mode Standard;
- exactly one master, whose kernel holds 10.77.0.10, the other slave; the gateway witness
  and the arbiter answer;
- a phone registers (and calls) through the node IP from the client namespace;
- the slave's MariaDB replicates the master's, semi-synchronously, and Kamailio keeps its
  registrations in it (usrloc written through to the ``location`` table);
- ``up`` again is a no-op; a crash of the master moves the node IP, and phones follow:
  a phone that registered before the crash is called through the new master without
  registering again (its registration came with the database), and new phones register;
- ``down`` stops the licence server, the mail sink and the arbiter too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import lifecycle
from tests.node.conftest import REPO, UP_TIMEOUT_S, lab, teardown_problems
from tests.node.test_failover_lab import (
    NODE_IP,
    holds_node_ip,
    later_tests_use_the_lab,
    node_run,
    other,
    role,
    serves_node_ip,
    voxnode,
    wait_for,
)
from tests.node.test_sip import assert_registered
from tests.sipclient import Phone, run_in_lab

pytestmark = [pytest.mark.root]

NODES = ("node1", "node2")
STATE = REPO / "out" / "lab" / "state.json"
PHONE = "1003"  # registers before the master crashes, is called after it
CALLER = "1004"


def status(node: str, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(voxnode(node, "--json", *args))
    return data


def location(node: str, user: str) -> list[dict[str, str]]:
    """The contacts of ``user`` in the node's database (Kamailio's usrloc table)."""
    proc = node_run(node, "mariadb", "--batch", "-e", "SELECT contact, socket, cseq FROM "
                    f"kamailio.location WHERE username = '{user}' ORDER BY id")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()  # no header line either when no row matches
    return [dict(zip(lines[0].split("\t"), row.split("\t"), strict=True))
            for row in lines[1:]]


def alive(pid: int, started: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return stat[0] != "Z" and int(stat[19]) == started


@pytest.fixture(scope="module")
def appliance(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    missing = [t for t in ("mmdebstrap", "systemd-nspawn", "nsenter") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"host tools missing: {', '.join(missing)} (run `make lab-apt`)")
    down = lab("down", timeout=90)
    assert down.returncode == 0, down.stdout + down.stderr
    started = time.monotonic()
    up = lab("up", timeout=UP_TIMEOUT_S)
    if up.returncode != 0:
        lab("down", timeout=90)
        pytest.fail(f"lab up exited {up.returncode}:\n{up.stdout}\n{up.stderr}")
    print(f"\nlab up (the appliance) in {time.monotonic() - started:.1f} s")
    state: dict[str, Any] = json.loads(STATE.read_text())
    yield {"state": state, "output": up.stdout}
    recorded = json.loads(STATE.read_text()) if STATE.exists() else state
    if later_tests_use_the_lab(request):
        for args in (("down",), ("up", "--standalone")):
            proc = lab(*args, timeout=UP_TIMEOUT_S)
            assert proc.returncode == 0, f"lab {args[0]}: {proc.stdout}{proc.stderr}"
    else:
        problems = teardown_problems()
        assert not problems, "; ".join(problems)
    helpers = [recorded["vendor"]["server"], recorded["vendor"]["mailsink"],
               recorded["arbiter"]]
    assert not [h for h in helpers if alive(h["pid"], h["started"])], \
        "lab down left the licence server, the mail sink or the arbiter running"


def test_up_prints_the_pair_and_what_to_try(appliance: dict[str, Any]) -> None:
    out = appliance["output"]
    assert f"a licensed pair serving the node IP {NODE_IP}" in out
    for hint in ("tests.sipclient --registrar 10.77.0.10", "voxnode-lab crash node1",
                 "voxnode ha status", "ha switchover", "make lab-down"):
        assert hint in out, hint
    assert appliance["state"]["mode"] == "appliance"


def test_both_nodes_are_licensed_in_standard_mode(appliance: dict[str, Any]) -> None:
    serials = set()
    for node in NODES:
        node_status = status(node, "status")
        assert node_status["mode"] == "standard"
        licence = node_status["licence"]
        assert licence["state"] == "ACTIVE", licence
        assert licence["serial"] == appliance["state"]["nodes"][node]["serial"]
        serials.add(licence["serial"])
        assert status(node, "config", "show")["document"]["license"]["server_url"] == \
            "http://10.77.0.201:8443"
    assert len(serials) == 2  # one serial per node
    mails = (REPO / "out" / "lab" / "vendor" / "mail.jsonl").read_text().splitlines()
    assert sum("verification code is" in json.loads(m)["body"] for m in mails) == 2


def test_one_master_holds_the_node_ip(appliance: dict[str, Any]) -> None:
    roles = {n: role(n) for n in NODES}
    masters = [n for n, r in roles.items() if r == "master"]
    assert len(masters) == 1, roles
    master = masters[0]
    assert roles[other(master)] == "slave"
    assert (holds_node_ip(master), holds_node_ip(other(master))) == (True, False)
    assert serves_node_ip(master) and not serves_node_ip(other(master))
    slave = status(other(master), "ha", "status")
    assert [(w["address"], w["reachable"]) for w in slave["witnesses"]] == [("10.77.0.1", True)]
    assert slave["arbiter"]["address"] == "10.77.0.1:7412"
    assert slave["arbiter"]["lease_holder"] == "peer"
    assert slave["failover_blockers"] == []


def test_a_phone_registers_through_the_node_ip(appliance: dict[str, Any]) -> None:
    result = run_in_lab(NODE_IP, "--stall", "2", attempts=6, timeout=90)
    assert result["errors"] == [], result["errors"]
    assert_registered(result, "1001", "1002")
    assert result["registrar"] == f"{NODE_IP}:5060"
    assert result["ok"] is True


def test_status_shows_the_pair(appliance: dict[str, Any]) -> None:
    """``voxnode status`` says each node's role and its peer's; ``voxnode-lab status`` the
    appliance: roles, node IP, licences, the vendor's servers and the arbiter."""
    roles = {n: role(n) for n in NODES}
    addresses = {"node1": "10.77.0.11", "node2": "10.77.0.12"}
    for node in NODES:
        pair = status(node, "status")["pair"]
        assert pair["enabled"] is True and pair["running"] is True, pair
        assert pair["role"] == roles[node]
        assert (pair["peer"], pair["peer_role"]) == (addresses[other(node)],
                                                    roles[other(node)]), pair
        assert pair["node_ip_holder"] == ("this node" if roles[node] == "master" else "peer")
        text = voxnode(node, "status")
        assert f"{roles[node]}; peer {addresses[other(node)]} {roles[other(node)]}" in text
    proc = lab("status", "--json", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["up"] is True and data["mode"] == "appliance"
    shown = data["appliance"]
    assert shown["settled"] is True
    assert {n: v["role"] for n, v in shown["nodes"].items()} == roles
    assert {n: v["licence"] for n, v in shown["nodes"].items()} == dict.fromkeys(NODES,
                                                                                "ACTIVE")
    assert shown["vendor"]["licence_server"] and shown["vendor"]["mail_sink"]
    assert shown["arbiter"] == {"address": "10.77.0.1:7412", "running": True}
    text = lab("status", timeout=60).stdout
    assert "settled (one master holds it, one slave)" in text
    assert "arbiter: 10.77.0.1:7412 running" in text


def test_up_again_is_a_no_op(appliance: dict[str, Any]) -> None:
    proc = lab("up", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "already up (appliance)" in proc.stdout
    assert f"serving the node IP {NODE_IP}" in proc.stdout


def test_the_slave_replicates_the_registrations(appliance: dict[str, Any]) -> None:
    """The master's commits wait for the slave (semi-synchronous), and a phone's
    registration is a row of the master's ``location`` table the slave holds too."""
    master = next(n for n in NODES if role(n) == "master")
    slave = other(master)
    master_db = status(master, "replication", "status")["database"]
    slave_db = status(slave, "replication", "status")["database"]
    assert (master_db["state"], slave_db["state"]) == ("master", "replicating"), (
        master_db, slave_db)
    assert master_db["server"]["semi_sync_master"] and \
        master_db["server"]["semi_sync_clients"] == 1, master_db
    assert slave_db["server"]["read_only"] is True
    with Phone.start(NODE_IP, PHONE, "--expires", "300", "--stall", "2") as phone:
        assert phone.events[-1]["status"] == 200, phone.events
        # on the slave soon after the phone has its 200: the commit waited until the
        # replica had received it (semi-synchronous, AFTER_SYNC); applying it takes a moment
        on_master = location(master, PHONE)
        with contextlib.suppress(AssertionError):  # the assertion below says what is wrong
            wait_for("the slave applies the registration",
                     lambda: location(slave, PHONE) == on_master, 5)
        on_slave = location(slave, PHONE)
        assert len(on_master) == 1 and on_slave == on_master, (
            f"{PHONE} registered (200), but the location table has {on_master} on the "
            f"master, {on_slave} on the slave")
        assert on_slave[0]["socket"] == f"udp:{NODE_IP}:5060"
        report = phone.stop()
    assert report["ok"] is True, report["errors"]
    assert report["unregister"]["status"] == 200  # the contact is removed again, on both
    wait_for("the unREGISTER replicated", lambda: location(slave, PHONE) == [], 5)
    assert location(master, PHONE) == []


def test_a_crash_of_the_master_moves_the_node_ip_and_keeps_the_registrations(
        appliance: dict[str, Any]) -> None:
    """A phone registered through the node IP before the master crashes is called through
    the new master without registering again: its contact is the row the old master's
    Kamailio wrote through to its database, which the slave had replicated."""
    master = next(n for n in NODES if role(n) == "master")
    survivor = other(master)
    with Phone.start(NODE_IP, PHONE, "--expires", "300", "--stall", "2") as phone:
        assert phone.events[-1]["status"] == 200, phone.events
        registered = phone.sent()
        assert len(registered) == 1, registered
        crashed_at = lifecycle.crash(master)
        wait_for(f"{survivor} holds {NODE_IP}", lambda: holds_node_ip(survivor), 10)
        degraded = lab("status", timeout=60)
        assert degraded.returncode == 5 and "lab: degraded" in degraded.stdout, degraded.stdout
        pair = status(survivor, "status")["pair"]
        assert (pair["role"], pair["peer_role"], pair["node_ip_holder"]) == (
            "master", None, "this node"), pair
        wait_for(f"kamailio serves {NODE_IP} on {survivor}",
                 lambda: serves_node_ip(survivor), 10)

        call = run_in_lab(NODE_IP, "--caller", CALLER, "--remote-callee", "--dial", PHONE,
                          "--stall", "2", attempts=6, timeout=90)
        known = location(survivor, PHONE)
        assert call["call"] is not None, call["errors"]
        assert call["call"]["final_status"] == 200, (
            f"the call to {PHONE}, registered before the crash, got "
            f"{call['call']['final_status']} {call['call']['caller']['last_reason']} from "
            f"the new master {survivor}, whose database has {known} for it")
        assert call["ok"] is True and call["errors"] == [], call["errors"]
        assert phone.wait_for(lambda e: e["event"] == "call" and e["state"] == "DISCONNECTED",
                              10) is not None, phone.events
        # it rang on the phone, after the crash, and the phone sent no REGISTER since: the
        # new master knew it already, from the row the old master wrote
        rang = [e for e in phone.events if e["event"] == "incoming"]
        states = [e["state"] for e in phone.events if e["event"] == "call"]
        assert states == ["INCOMING", "CONNECTING", "CONFIRMED", "DISCONNECTED"], states
        assert len(rang) == 1 and rang[0]["mono"] > crashed_at, rang
        assert phone.sent() == registered and registered[0]["mono"] < crashed_at, \
            phone.events
        contact = next(e["contact"] for e in phone.events if e["event"] == "started")
        assert len(known) == 1 and known[0]["contact"].startswith(
            f"sip:{PHONE}@{contact}"), (known, contact)
    # and phones register with the new master as well
    result = run_in_lab(NODE_IP, "--stall", "2", attempts=6, timeout=90)
    assert_registered(result, "1001", "1002")
