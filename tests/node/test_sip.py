"""SIP smoke test in the lab: two pjsua2 accounts register to node1's PBX engine (Kamailio on
10.77.0.11, Debian's default configuration: no authentication, usrloc in memory) and call
each other through it, from the client namespace (10.77.0.100).

The client runs in its own process inside the namespace (``tests/sipclient.py``); these
tests judge its JSON result. The failover tests build on the same client.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.node.conftest import lab_exec
from tests.sipclient import run_in_lab

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]

NODE1 = "10.77.0.11"
NODE2 = "10.77.0.12"


def wait_engine(node: str, timeout: float = 15.0) -> None:
    """Wait until the node's PBX engine runs (another test may just have restarted it)."""
    deadline = time.monotonic() + timeout
    while lab_exec(node, "systemctl", "is-active", "kamailio").stdout.strip() != "active":
        assert time.monotonic() < deadline, f"kamailio is not active on {node}"
        time.sleep(0.2)


def assert_registered(result: dict[str, Any], *users: str) -> None:
    for user in users:
        reg = result["register"][user]
        assert reg["status"] == 200, f"REGISTER {user}: {reg}\n{result['errors']}"
        assert reg["reason"] == "OK"
        assert reg["expires"] > 0
        assert 0 < reg["latency_ms"] < 2000


def assert_call_went_through(result: dict[str, Any]) -> None:
    call = result["call"]
    assert call is not None, result["errors"]
    caller, callee = call["caller"], call["callee"]
    assert call["final_status"] == 200
    assert caller["confirmed"], caller["states"]
    assert callee is not None, "the callee never saw the INVITE"
    assert callee["confirmed"], callee["states"]
    caller_states = [s["state"] for s in caller["states"]]
    callee_states = [s["state"] for s in callee["states"]]
    assert caller_states[0] == "CALLING" and caller_states[-1] == "DISCONNECTED"
    assert callee_states[0] == "INCOMING" and callee_states[-1] == "DISCONNECTED"
    assert caller_states.index("CONFIRMED") < caller_states.index("DISCONNECTED")
    assert callee_states.index("CONFIRMED") < callee_states.index("DISCONNECTED")
    assert caller["disconnected"] and callee["disconnected"]
    assert 0 < call["setup_ms"] < 2000
    # the call was held (hold 300 ms by default) before the caller hung up
    assert call["hangup_ms"] >= 250


def test_two_accounts_register_and_call_through_node1() -> None:
    wait_engine("node1")
    result = run_in_lab(NODE1)
    assert result["errors"] == []
    assert_registered(result, "1001", "1002")
    assert result["call"]["target"] == f"sip:1002@{NODE1}"
    assert_call_went_through(result)
    # both contacts removed again (usrloc stays clean for the next run)
    assert {u: r["status"] for u, r in result["unregister"].items()} == {"1001": 200, "1002": 200}
    assert result["ok"] is True and result["returncode"] == 0


def test_calling_an_unregistered_user_gets_404() -> None:
    """Kamailio's location lookup fails for 1999: the default config answers 404 Not Found."""
    wait_engine("node1")
    result = run_in_lab(NODE1, "--dial", "1999", "--expect-status", "404")
    assert_registered(result, "1001", "1002")
    call = result["call"]
    assert call["final_status"] == 404
    assert call["caller"]["last_reason"] == "Not Found"
    assert not call["caller"]["confirmed"]
    assert [s["state"] for s in call["caller"]["states"]] == ["CALLING", "DISCONNECTED"]
    assert call["callee"] is None, "an INVITE for 1999 reached the callee"
    assert result["ok"] is True and result["returncode"] == 0


def test_client_reports_a_failed_call_as_not_ok() -> None:
    """The verdict can fail: expecting an answer from an unregistered user is not ok."""
    wait_engine("node1")
    result = run_in_lab(NODE1, "--dial", "1999")
    assert result["call"]["final_status"] == 404
    assert result["ok"] is False and result["returncode"] == 1


def test_call_from_node2_namespace_through_node1() -> None:
    """The same call placed from node2's network namespace (source 10.77.0.12)."""
    wait_engine("node1")
    result = run_in_lab(NODE1, "--bind", NODE2, "--caller", "2001", "--callee", "2002",
                        netns="vxlab-node2")
    assert result["bind"] == NODE2
    assert_registered(result, "2001", "2002")
    assert_call_went_through(result)
    assert result["ok"] is True
