"""Services in the lab: the agent drives the real systemd of a node over D-Bus."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.node.conftest import lab_exec

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]


def services(node: str = "node1") -> dict[str, Any]:
    proc = lab_exec(node, "voxnode", "services", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def unit(data: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(u for u in data["units"] if u["name"] == name)
    return found


def test_kamailio_runs_as_the_pbx_engine() -> None:
    data = services()
    engine = unit(data, "pbx-engine")
    assert engine["unit"] == "kamailio.service"
    assert engine["wanted"] is True
    assert engine["active_state"] == "active"
    assert lab_exec("node1", "systemctl", "is-active", "kamailio").stdout.strip() == "active"


def test_unlicensed_units_say_why_they_do_not_run() -> None:
    database = unit(services(), "database")
    assert database["wanted"] is False
    assert "no licence is active on this node" in database["reason"]
    assert lab_exec("node1", "systemctl", "is-active", "mariadb").stdout.strip() == "inactive"


def test_engine_stopped_by_hand_is_reported_and_restarted() -> None:
    assert lab_exec("node1", "systemctl", "stop", "kamailio").returncode == 0
    engine = unit(services(), "pbx-engine")
    assert engine["active_state"] == "inactive"
    assert "the next reconcile starts it" in engine["drift"]
    proc = lab_exec("node1", "voxnode", "services", "reconcile")
    assert proc.returncode == 0, proc.stderr
    assert "start kamailio.service" in proc.stdout
    deadline = time.monotonic() + 10
    while lab_exec("node1", "systemctl", "is-active", "kamailio").stdout.strip() != "active":
        assert time.monotonic() < deadline, "kamailio was not restarted"
        time.sleep(0.2)
    assert unit(services(), "pbx-engine")["drift"] is None
