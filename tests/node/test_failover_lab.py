"""Fault tolerance in the nspawn lab: Kamailio follows the master, phones keep one address.

node1 and node2 become a pair through the agent's own interfaces only (``voxnode ha
pair-key generate`` / ``set -``, then ``voxnode config apply`` of each node's document plus
an ``ha`` section; the witness is the gateway 10.77.0.1). The node IP 10.77.0.10 is what
phones use: the client registers and calls through it before and after every change.

Checked, each time from the kernel (``ip -n vxlab-nodeN -j addr``, ``ss``) and systemd, not
only from the agent's word:

- one master holds the node IP, the other is slave; Kamailio runs on the master only and
  serves the node IP (the agent takes the address, then starts the master's units, so
  Debian's default kamailio.cfg, which binds the addresses present at its start, needs
  no ``listen=``);
- the master crashes (``lab.lifecycle.crash``: every process of the container frozen and
  killed; its kernel keeps the node IP and answers ARP, like a hung machine): the slave
  takes the node IP and starts Kamailio within seconds, and SIP works again;
- the crashed node boots again on its own disk (``lab.lifecycle.start``) and stays slave with
  Kamailio stopped (no preemption);
- ``voxnode ha switchover`` moves the node IP and Kamailio to the other node.

The tests run in file order and share the pair. The lab is restarted at the end when
later tests of the session use it (they expect revision 1 and standalone nodes).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from lab import lifecycle, net, nodes
from tests.node.conftest import UP_TIMEOUT_S, lab
from tests.node.test_sip import assert_call_went_through, assert_registered
from tests.sipclient import run_in_lab

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]

NODES = {"node1": "10.77.0.11", "node2": "10.77.0.12"}
NODE_IP = "10.77.0.10"
NODE_IP_CIDR = f"{NODE_IP}/24"
TAKEOVER_S = 3.0  # dead interval 0.6 s (standard profile) + promotion + Kamailio's start


def other(node: str) -> str:
    return "node2" if node == "node1" else "node1"


# --- talking to the nodes -------------------------------------------------------------------


def node_run(node: str, *cmd: str, stdin: str | None = None,
             timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command inside a node (what `voxnode-lab exec` does, without a Python start)."""
    pid = nodes.nspawn_pid(nodes.member(node))
    leader = nodes.container_pid(pid) if pid else None
    assert leader is not None, f"{node} is not running"
    return subprocess.run(nodes.node_command(leader, list(cmd)), input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)


def voxnode(node: str, *args: str, stdin: str | None = None) -> str:
    proc = node_run(node, "voxnode", *args, stdin=stdin)
    assert proc.returncode == 0, f"{node}: voxnode {' '.join(args)}: {proc.stderr}{proc.stdout}"
    return proc.stdout


def ha_status(node: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(voxnode(node, "--json", "ha", "status"))
    return data


def ha_events(node: str) -> list[dict[str, Any]]:
    return list(json.loads(voxnode(node, "--json", "ha", "events"))["events"])


def role(node: str) -> str | None:
    proc = node_run(node, "voxnode", "--json", "ha", "status", timeout=5)
    if proc.returncode != 0:
        return None
    value: str | None = json.loads(proc.stdout).get("role")
    return value


def kamailio(node: str) -> str:
    return node_run(node, "systemctl", "is-active", "kamailio", timeout=5).stdout.strip()


def holds_node_ip(node: str) -> bool:
    """The node's kernel has the node IP on eth0 (labelled ``eth0:vip`` by the agent)."""
    out = subprocess.run(["ip", "-n", f"vxlab-{node}", "-j", "-4", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    return any(a["local"] == NODE_IP for link in json.loads(out or "[]")
               for a in link.get("addr_info", []))


def node_ip_label(node: str) -> str | None:
    out = subprocess.run(["ip", "-n", f"vxlab-{node}", "-j", "-4", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            if a["local"] == NODE_IP:
                label: str | None = a.get("label")
                return label
    return None


def serves_node_ip(node: str) -> bool:
    """A process in the node listens for SIP over UDP on the node IP (or on every address)."""
    out = subprocess.run(["ip", "netns", "exec", f"vxlab-{node}", "ss", "-Hulnp",
                          "sport", "=", ":5060"], capture_output=True, text=True,
                         check=True).stdout
    return any(f"{a}:5060" in out for a in (NODE_IP, "0.0.0.0", "*")) and "kamailio" in out


def history() -> str:
    """Both nodes' role transitions, for assertion messages."""
    lines = []
    for node in NODES:
        proc = node_run(node, "voxnode", "--json", "ha", "events", timeout=10)
        if proc.returncode != 0:
            lines.append(f"{node}: no answer")
            continue
        for e in json.loads(proc.stdout)["events"]:
            lines.append(f"{node} {e['time']:.3f} {e['from']} -> {e['to']} (epoch {e['epoch']}, "
                         f"{e['took_ms']} ms): {e['reason']}")
    return "\n".join(lines)


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.02) -> float:
    """Poll ``check()`` until true; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s\n{history()}"
        time.sleep(interval)
    return time.monotonic()


def assert_sip_through_node_ip() -> dict[str, Any]:
    """Register two phones at the node IP and call from one to the other through it.

    A short stall watchdog and more attempts: the client's pjsua2 binding deadlocks now
    and then when the REGISTER's 200 comes back before ``Account.create`` returns (see
    ``quiet()`` in tests/sipclient.py); a run that stalls is run again.
    """
    result = run_in_lab(NODE_IP, "--stall", "2", attempts=6, timeout=90)
    assert result["errors"] == [], result["errors"]
    assert_registered(result, "1001", "1002")
    assert result["call"]["target"] == f"sip:1002@{NODE_IP}"
    assert_call_went_through(result)
    assert result["ok"] is True and result["returncode"] == 0
    return result


# --- the pair -------------------------------------------------------------------------------


@dataclass
class Pair:
    master: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def slave(self) -> str:
        return other(self.master)


def wait_pair(timeout: float) -> str:
    """One master whose kernel holds the node IP, the other slave without it."""
    deadline = time.monotonic() + timeout
    while True:
        roles = {n: role(n) for n in NODES}
        holders = {n for n in NODES if holds_node_ip(n)}
        masters = [n for n, r in roles.items() if r == "master"]
        if len(masters) == 1 and holders == set(masters) and roles[other(masters[0])] == "slave":
            return masters[0]
        assert time.monotonic() < deadline, (
            f"no single master holding {NODE_IP} within {timeout:g} s: roles {roles}, "
            f"kernel holders {sorted(holders)}")
        time.sleep(0.1)


def restart_lab() -> None:
    for args, timeout in ((("down",), 60.0), (("up", "--standalone"), float(UP_TIMEOUT_S))):
        proc = lab(*args, timeout=timeout)
        assert proc.returncode == 0, f"lab {args[0]}: {proc.stdout}{proc.stderr}"


def later_tests_use_the_lab(request: pytest.FixtureRequest) -> bool:
    items = request.session.items
    mine = [i for i, item in enumerate(items) if getattr(item, "module", None) is request.module]
    return any("lab_up" in getattr(item, "fixturenames", ())
               for item in items[max(mine, default=len(items)) + 1:])


def standalone(node: str) -> bool:
    """The node runs, without fault tolerance, and its kernel has no node IP."""
    if nodes.nspawn_pid(nodes.member(node)) is None:
        return False
    proc = node_run(node, "voxnode", "--json", "ha", "status", timeout=10)
    return (proc.returncode == 0 and json.loads(proc.stdout)["enabled"] is False
            and not holds_node_ip(node))


def ha_document(node: str) -> str:
    """The node's committed document (``voxnode config show``) plus the pair's ha section."""
    document = yaml.safe_load(voxnode(node, "config", "show"))
    document["ha"].update(
        enabled=True, peer=NODES[other(node)],
        shared_ips=[{"interface": "eth0", "address": NODE_IP_CIDR, "primary": True}],
        # these bare nodes are unlicensed: their database (licence-bound) does not run, and
        # Kamailio keeps registrations in memory. The replicated database, registrations
        # included, is the appliance's (test_appliance_lab.py; the rest is tests/netns)
        replication={"database": {"engine": "none"}},
    )
    return yaml.safe_dump(document, sort_keys=False)


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    if not all(standalone(n) for n in NODES):  # a pair or a crash left by an interrupted run
        restart_lab()
    try:
        key = voxnode("node1", "ha", "pair-key", "generate").strip()
        assert re.fullmatch(r"[0-9a-f]{64}", key), "pair-key generate did not print the key"
        assert "installed" in voxnode("node2", "ha", "pair-key", "set", "-", stdin=key + "\n")
        # node1 first: it hears no master and wins the election (equal epochs, lower address)
        for node in NODES:
            out = voxnode(node, "config", "apply", "-", stdin=ha_document(node))
            assert "started the failover runtime" in out, out
        yield Pair(master=wait_pair(timeout=15))
    finally:
        # the other node tests expect standalone nodes at revision 1: a fresh lab
        if later_tests_use_the_lab(request):
            restart_lab()


# --- the tests ------------------------------------------------------------------------------


def test_one_master_holds_the_node_ip_and_the_other_is_slave(pair: Pair) -> None:
    assert pair.master == "node1"  # configured first, and the lower address
    master, slave = ha_status(pair.master), ha_status(pair.slave)
    assert (master["role"], slave["role"]) == ("master", "slave")
    assert master["node_ip_holder"] == "this node"
    assert slave["node_ip_holder"] == "peer"
    assert master["peer"]["reachable"] and slave["peer"]["reachable"]
    assert [w["address"] for w in slave["witnesses"]] == ["10.77.0.1"]  # the gateway
    assert slave["failover_blockers"] == []  # the slave could take over now
    assert (holds_node_ip(pair.master), holds_node_ip(pair.slave)) == (True, False)
    assert node_ip_label(pair.master) == "eth0:vip"
    # each node keeps its own address besides
    for node, address in NODES.items():
        assert f"{address}/24" in net.addresses(f"vxlab-{node}")


def test_kamailio_runs_on_the_master_only(pair: Pair) -> None:
    wait_for("kamailio active on the master", lambda: kamailio(pair.master) == "active", 10)
    assert serves_node_ip(pair.master)
    assert kamailio(pair.slave) == "inactive"
    assert not serves_node_ip(pair.slave)
    listing = json.loads(voxnode(pair.slave, "--json", "services", "list"))
    engine = next(u for u in listing["units"] if u["name"] == "pbx-engine")
    assert listing["role"] == "slave"
    assert engine["wanted"] is False
    assert "runs on master and standalone nodes only" in engine["reason"]


def test_sip_register_and_call_through_the_node_ip(pair: Pair) -> None:
    assert_sip_through_node_ip()


def test_master_crash_moves_the_node_ip_and_kamailio(pair: Pair) -> None:
    crashed, survivor = pair.master, pair.slave
    at = lifecycle.crash(crashed)
    ip_at = wait_for(f"{survivor} holds {NODE_IP}", lambda: holds_node_ip(survivor), 10)
    kam_at = wait_for(f"kamailio serves {NODE_IP} on {survivor}",
                      lambda: serves_node_ip(survivor) and kamailio(survivor) == "active", 10)
    assert role(survivor) == "master"
    sip = assert_sip_through_node_ip()
    sip_at = time.monotonic()
    pair.master = survivor
    pair.timings.update(node_ip_s=ip_at - at, kamailio_s=kam_at - at, sip_ok_s=sip_at - at)
    print(f"\ncrash of {crashed}: {survivor} held {NODE_IP} after {ip_at - at:.2f} s, "
          f"Kamailio served it after {kam_at - at:.2f} s, register+call done after "
          f"{sip_at - at:.2f} s (client runs: {sip['attempts']})")
    assert ip_at - at < TAKEOVER_S
    assert kam_at - at < TAKEOVER_S
    promotion = ha_events(survivor)[-1]
    assert (promotion["from"], promotion["to"]) == ("slave", "master")
    assert "master unreachable" in promotion["reason"]


def test_crashed_node_comes_back_as_slave_without_kamailio(pair: Pair) -> None:
    back, master = pair.slave, pair.master
    assert nodes.nspawn_pid(nodes.member(back)) is None, "run after the crash test"
    booted = time.monotonic()
    lifecycle.start(back)
    wait_for(f"{back} slave", lambda: role(back) == "slave", 15, interval=0.1)
    # its dead kernel still had the node IP: the agent releases it before deciding
    wait_for(f"{back} releases {NODE_IP}", lambda: not holds_node_ip(back), 5)
    wait_for(f"kamailio stopped on {back}", lambda: kamailio(back) == "inactive", 15)
    time.sleep(1.0)  # several heartbeats: no preemption, nothing flaps
    assert (role(back), role(master)) == ("slave", "master")
    assert (holds_node_ip(back), holds_node_ip(master)) == (False, True)
    assert kamailio(master) == "active" and kamailio(back) == "inactive"
    assert not serves_node_ip(back)
    came_back = ha_events(back)[-1]
    assert (came_back["from"], came_back["to"]) == ("init", "slave")
    assert "no preemption" in came_back["reason"]
    print(f"\n{back} booted again and was slave with Kamailio stopped after "
          f"{time.monotonic() - booted:.1f} s")
    assert_sip_through_node_ip()


def test_returning_node_never_ran_kamailio_before_its_role_was_known(pair: Pair) -> None:
    back = pair.slave
    shown = node_run(back, "systemctl", "show", "-p", "ActiveEnterTimestampMonotonic",
                     "kamailio").stdout.strip()
    assert shown == "ActiveEnterTimestampMonotonic=0", f"kamailio ran on {back} this boot"


def test_switchover_moves_the_node_ip_and_kamailio(pair: Pair) -> None:
    old, new = pair.master, pair.slave
    at = time.monotonic()
    voxnode(old, "ha", "switchover")
    ip_at = wait_for(f"{new} holds {NODE_IP}", lambda: holds_node_ip(new), 5)
    kam_at = wait_for(f"kamailio serves {NODE_IP} on {new}",
                      lambda: serves_node_ip(new) and kamailio(new) == "active", 10)
    time.sleep(1.0)  # and it stays there: the old master does not elect itself back
    assert (role(new), role(old)) == ("master", "slave"), history()
    assert (holds_node_ip(new), holds_node_ip(old)) == (True, False)
    assert kamailio(new) == "active" and kamailio(old) == "inactive"
    assert_sip_through_node_ip()
    pair.master = new
    print(f"\nswitchover {old} -> {new}: node IP after {ip_at - at:.2f} s, Kamailio after "
          f"{kam_at - at:.2f} s")
    handed, took = ha_events(old)[-1], ha_events(new)[-1]
    assert (handed["from"], handed["to"]) == ("master", "slave"), history()
    assert "switchover" in handed["reason"]
    assert (took["from"], took["to"]) == ("slave", "master"), history()
    assert took["reason"].endswith("handed the node IP over (switchover)")
