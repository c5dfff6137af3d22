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
- ``up`` again is a no-op; a crash of the master moves the node IP, and phones follow;
- ``down`` stops the licence server, the mail sink and the arbiter too.
"""

from __future__ import annotations

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
    other,
    role,
    serves_node_ip,
    voxnode,
    wait_for,
)
from tests.node.test_sip import assert_registered
from tests.sipclient import run_in_lab

pytestmark = [pytest.mark.root]

NODES = ("node1", "node2")
STATE = REPO / "out" / "lab" / "state.json"


def status(node: str, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(voxnode(node, "--json", *args))
    return data


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


def test_a_crash_of_the_master_moves_the_node_ip(appliance: dict[str, Any]) -> None:
    master = next(n for n in NODES if role(n) == "master")
    survivor = other(master)
    lifecycle.crash(master)
    wait_for(f"{survivor} holds {NODE_IP}", lambda: holds_node_ip(survivor), 10)
    degraded = lab("status", timeout=60)
    assert degraded.returncode == 5 and "lab: degraded" in degraded.stdout, degraded.stdout
    pair = status(survivor, "status")["pair"]
    assert (pair["role"], pair["peer_role"], pair["node_ip_holder"]) == (
        "master", None, "this node"), pair
    wait_for(f"kamailio serves {NODE_IP} on {survivor}", lambda: serves_node_ip(survivor), 10)
    result = run_in_lab(NODE_IP, "--stall", "2", attempts=6, timeout=90)
    assert_registered(result, "1001", "1002")
