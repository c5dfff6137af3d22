"""`voxnode ha status` renders what the agent reports: channels, arbiter, blockers, health."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cli import output
from agent.cli.ha import show_status


def running_status() -> dict[str, Any]:
    return {
        "enabled": True, "running": True, "problem": None, "role": "slave", "epoch": 4,
        "cloud": False, "profile": "standard", "pair_key": True, "node_id": "10.0.0.12",
        "last_transition": {"from": "init", "to": "slave", "time": 1.7e9, "reason": "r",
                            "epoch": 4, "steps": [], "took_ms": 1},
        "timing_ms": {"dead": 600},
        "peer": {"address": "10.0.0.11", "reachable": True, "role": "master", "epoch": 4,
                 "holds_node_ip": True, "last_seen_ms": 40, "clock_offset_s": 0.01,
                 "channels": {
                     "udp": {"last_heard_ms": 3000, "sending": "failing",
                             "error": "Invalid argument (no usable route to it)",
                             "failed_sends": 20},
                     "ethernet": {"last_heard_ms": 40, "sending": "ok", "error": None,
                                  "failed_sends": 0}},
                 "rejected_messages": {"count": 3, "sources": [
                     {"source": "10.0.0.11", "count": 3, "last_reason": "bad signature",
                      "last_seen_ms": 100}]}},
        "node_ip": [{"address": "10.0.0.10/24", "interface": "eth0", "primary": True}],
        "node_ip_holder": "peer",
        "witnesses": [{"address": "10.0.0.1", "reachable": True, "last_seen_age_ms": 10,
                       "mac": "02:00:00:00:00:01", "other_macs": None}],
        "arbiter": {"address": "10.0.0.5:7412", "last_answer_ms": 50,
                    "lease_holder": "peer", "lease_left_ms": 300, "send_error": None},
        "decision": "following the master",
        "failover_blockers": [{"code": "arbiter-unreachable", "text": "Arbiter unreachable"}],
        "health": [{"code": "heartbeat-send-failing",
                    "text": "UDP heartbeats to 10.0.0.11 fail: Invalid argument"}],
        "next_step": None,
    }


def test_status_shows_channels_arbiter_blockers_and_health(
        capsys: pytest.CaptureFixture[str]) -> None:
    output.out.width = 200  # type: ignore[misc]
    show_status(running_status())
    text = capsys.readouterr().out
    assert "FAILING: Invalid argument" in text
    assert "lease held by peer, 300 ms left" in text
    assert "Arbiter unreachable" in text
    assert "UDP heartbeats to 10.0.0.11 fail" in text
    assert "3 (last from 10.0.0.11: bad signature)" in text


def test_status_of_a_pair_that_does_not_run(capsys: pytest.CaptureFixture[str]) -> None:
    show_status({"enabled": True, "running": False, "failover_blockers": [
        {"code": "not-running", "text": "no pair key: run ..."}]})
    assert "no pair key" in capsys.readouterr().out


def test_status_shows_a_transition_under_way(capsys: pytest.CaptureFixture[str]) -> None:
    status = running_status()
    status["role"] = "master"
    status["transition_in_progress"] = {"from": "slave", "to": "master",
                                        "reason": "master unreachable", "time": 1.7e9}
    show_status(status)
    shown = capsys.readouterr().out
    assert "in progress" in shown and "slave → master since" in shown
    assert "master unreachable" in shown
    status["transition_in_progress"] = None
    show_status(status)
    assert "in progress" not in capsys.readouterr().out
