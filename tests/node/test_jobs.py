"""Jobs in the lab: the MongoDB update job as node1 runs it, and the job history surviving
an agent restart (a scheduled job is still scheduled afterwards).

The lab catalogue has no chat or tvox web services (Debian cannot install them), so every
step of the MongoDB update job is skipped there, each saying why; the order, the failure
path and "interrupted" are covered by tests/unit/test_jobs.py on the systemd fake.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.node.conftest import lab_exec

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]

STEPS = ["restart-chat", "restart-webapi", "restart-webclientproxy", "restart-webcustomerproxy"]


def voxnode_json(*args: str, node: str = "node1", expect: int = 0) -> Any:
    proc = lab_exec(node, "voxnode", *args, "--json")
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_mongodb_update_job_with_wait() -> None:
    kinds = {k["name"]: k for k in voxnode_json("jobs", "kinds")["kinds"]}
    assert [s["name"] for s in kinds["mongodb-update"]["steps"]] == STEPS
    job = voxnode_json("jobs", "schedule", "mongodb-update", "--wait")
    assert job["state"] == "succeeded", job
    assert job["progress"] == 100
    shown = voxnode_json("jobs", "show", str(job["id"]))
    assert [s["name"] for s in shown["steps"]] == STEPS
    assert [s["state"] for s in shown["steps"]] == ["skipped"] * 4
    assert shown["steps"][0]["message"] == "chat is not in this node's service catalogue (lab)"
    assert shown["steps"][3]["message"] == (
        "webcustomerproxy is not in this node's service catalogue (lab)")
    assert shown["result"] == "0 steps done, 4 skipped"
    listed = voxnode_json("jobs", "list")
    assert listed["jobs"][0]["id"] == job["id"]


def _agent_answers(node: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while lab_exec(node, "voxnode", "status").returncode != 0:
        assert time.monotonic() < deadline, f"the agent on {node} did not come back"
        time.sleep(0.5)


def test_a_scheduled_job_survives_an_agent_restart() -> None:
    at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    job = voxnode_json("jobs", "schedule", "mongodb-update", "--at", at.isoformat())
    try:
        assert job["state"] == "scheduled" and job["scheduled_at"] == at.timestamp()
        finished = [j for j in voxnode_json("jobs", "list")["jobs"] if j["id"] != job["id"]]
        proc = lab_exec("node1", "systemctl", "restart", "voxnode-agent")
        assert proc.returncode == 0, proc.stderr
        _agent_answers("node1")
        after = voxnode_json("jobs", "show", str(job["id"]))
        assert after["state"] == "scheduled" and after["scheduled_at"] == at.timestamp()
        kept = [j for j in voxnode_json("jobs", "list")["jobs"] if j["id"] != job["id"]]
        assert [(j["id"], j["state"]) for j in kept] == [
            (j["id"], j["state"]) for j in finished]
        refused = voxnode_json("jobs", "schedule", "mongodb-update", expect=6)
        assert refused["error"]["message"].startswith(
            f"a mongodb-update job is already scheduled (job {job['id']}, due at ")
    finally:
        lab_exec("node1", "voxnode", "jobs", "cancel", str(job["id"]))
    assert voxnode_json("jobs", "show", str(job["id"]))["state"] == "cancelled"
