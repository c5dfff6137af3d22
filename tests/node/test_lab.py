"""The two-node lab: both nodes boot systemd and the agent, the seed is applied, the LAN
works and stays closed, `exec` passes exit codes through. That `down` leaves nothing is
checked when the node tier removes its lab (tests/node/conftest.py)."""

from __future__ import annotations

import json
import subprocess

import pytest

from lab.util import EXIT_INVALID, EXIT_USAGE
from tests.node.conftest import lab, lab_exec

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]

NODES = {"node1": "10.77.0.11", "node2": "10.77.0.12"}


def _status(node: str) -> dict[str, object]:
    proc = lab_exec(node, "voxnode", "--json", "status")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def test_both_agents_answer() -> None:
    proc = lab("status", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["up"] is True
    for name, address in NODES.items():
        node = data["nodes"][name]
        assert node["running"] and node["agent"], node
        assert node["addresses"] == [f"{address}/24"]
        assert node["systemd"] in ("running", "degraded"), node


@pytest.mark.parametrize("node", sorted(NODES))
def test_seed_is_revision_1(node: str) -> None:
    data = _status(node)
    revision = data["revision"]
    assert isinstance(revision, dict)
    assert revision["revision"] == 1
    assert revision["source"] == "seed"
    assert data["hostname"] == node
    assert lab_exec(node, "hostname").stdout.strip() == node


def test_agent_unit_is_active_and_decides_the_pbx_units() -> None:
    assert lab_exec("node1", "systemctl", "is-active", "voxnode-agent").stdout.strip() == "active"
    # the image leaves them disabled; the agent enables units that run in every role
    # (nginx) and starts role-bound ones itself (the PBX engine: never at boot)
    enabled = lab_exec("node1", "systemctl", "is-enabled", "kamailio", "nginx", "mariadb")
    assert enabled.stdout.split() == ["disabled", "enabled", "disabled"]
    assert lab_exec("node1", "systemctl", "is-active", "kamailio").stdout.strip() == "active"


def test_node1_reaches_node2() -> None:
    proc = lab_exec("node1", "ping", "-c1", "-W2", NODES["node2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_client_reaches_node1() -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", "vxlab-client", "ping", "-c1", "-W2", NODES["node1"]],
        capture_output=True, text=True, timeout=10, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lab_has_no_way_out() -> None:
    links = json.loads(subprocess.run(["ip", "-n", "vxlab-br", "-j", "link"], capture_output=True,
                                      text=True, check=True).stdout)
    assert sorted(link["ifname"] for link in links) == ["br0", "lo", "vx-client", "vx-node1",
                                                        "vx-node2"]
    forward = subprocess.run(["ip", "netns", "exec", "vxlab-br", "cat",
                              "/proc/sys/net/ipv4/ip_forward"], capture_output=True, text=True,
                             check=True).stdout
    assert forward.strip() == "0"


def test_exit_codes_pass_through() -> None:
    assert lab_exec("node1", "false").returncode == 1
    assert lab_exec("node2", "sh", "-c", "exit 42").returncode == 42


def test_bad_input_is_one_line_and_distinct() -> None:
    unknown = lab_exec("node9", "true")
    assert unknown.returncode == EXIT_INVALID
    assert unknown.stderr.count("\n") == 1 and "Traceback" not in unknown.stderr
    no_dashes = lab("exec", "node1", "true")
    assert no_dashes.returncode == EXIT_USAGE
    assert "Traceback" not in no_dashes.stderr


def test_up_again_is_a_no_op() -> None:
    proc = lab("up", "--standalone")
    assert proc.returncode == 0, proc.stderr
    assert "already up" in proc.stdout
