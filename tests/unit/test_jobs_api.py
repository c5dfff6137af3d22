"""The jobs API in-process, and the `voxnode jobs` commands against a real agent socket."""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.api.http import error_middleware
from agent.api.jobs import add_routes
from agent.cli import jobs as jobs_cli
from agent.cli import output
from agent.cli.client import Client
from agent.errors import InvalidInput, Problem, SubsystemError, VoxnodeError
from agent.events import EventLog
from agent.jobs.runner import JobRunner
from agent.jobs.store import JobStore
from tests.unit.test_jobs import Steps, rome_time

__all__ = ["rome_time"]  # the autouse fixture pins the time zone here too
T = TypeVar("T")


def make_runner(tmp_path: Path, steps: Steps) -> JobRunner:
    runner = JobRunner(JobStore(tmp_path / "state"), EventLog())
    runner.register(steps.kind())
    runner.recover()
    return runner


def make_app(runner: JobRunner) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    add_routes(app, runner)
    return app


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Steps]]:
    steps = Steps()
    runner = make_runner(tmp_path, steps)
    task = asyncio.create_task(runner.run())
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(runner)))
    await client.start_server()
    yield client, steps
    await client.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def error_of(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status
    body = await resp.json()
    assert body["error"]["code"] == code
    return dict(body["error"])


async def test_schedule_show_list_kinds(api: tuple[TestClient[Any, Any], Steps]) -> None:
    client, steps = api
    kinds = await (await client.get("/v1/jobs/kinds")).json()
    assert kinds["kinds"][0]["name"] == "demo"
    assert [s["name"] for s in kinds["kinds"][0]["steps"]] == ["first", "second", "third"]
    resp = await client.post("/v1/jobs", json={"name": "demo"})
    assert resp.status == 201
    job = await resp.json()
    assert job["id"] == 1 and job["state"] == "scheduled" and job["scheduled_at"] is None
    for _ in range(200):
        shown = await (await client.get("/v1/jobs/1")).json()
        if shown["state"] == "succeeded":
            break
        await asyncio.sleep(0.005)
    assert shown["progress"] == 100 and [s["state"] for s in shown["steps"]] == ["succeeded"] * 3
    later = await (await client.post("/v1/jobs", json={"name": "demo",
                                                       "at": "2099-01-01T02:00:00+01:00"})).json()
    assert later["scheduled_at"] == datetime.fromisoformat("2099-01-01T02:00+01:00").timestamp()
    listed = await (await client.get("/v1/jobs")).json()
    assert [j["id"] for j in listed["jobs"]] == [2, 1]
    cancelled = await (await client.post("/v1/jobs/2/cancel", json={})).json()
    assert cancelled["state"] == "cancelled" and steps.calls == ["first", "second", "third"]


@pytest.mark.parametrize(("body", "status", "code", "problem"), [
    ({"name": "nope"}, 422, "invalid_input",
     {"path": "name", "message": "'nope' is not a job kind (known: demo)"}),
    ({}, 422, "invalid_input",
     {"path": "name", "message": "required: the job kind (see GET /v1/jobs/kinds)"}),
    ({"name": "demo", "when": "now"}, 422, "invalid_input",
     {"path": "when", "message": "unknown field (allowed: at, name, params)"}),
    ({"name": "demo", "at": "2099-01-01T02:00"}, 422, "invalid_input",
     {"path": "at", "message": "'2099-01-01T02:00' has no time zone "
      "(like 2026-11-23T02:00:00+01:00)"}),
    ({"name": "demo", "at": "tomorrow"}, 422, "invalid_input",
     {"path": "at", "message": "'tomorrow' is not an ISO 8601 time "
      "(like 2026-11-23T02:00:00+01:00)"}),
    ({"name": "demo", "at": 1700000000}, 422, "invalid_input",
     {"path": "at", "message": "must be an ISO 8601 time with a time zone, "
      "like 2026-11-23T02:00:00+01:00"}),
    ({"name": "demo", "at": "2020-01-01T00:00:00+00:00"}, 422, "invalid_input", None),
])
async def test_bad_schedule_requests(
    api: tuple[TestClient[Any, Any], Steps], body: dict[str, Any], status: int, code: str,
    problem: dict[str, str] | None,
) -> None:
    err = await error_of(await api[0].post("/v1/jobs", json=body), status, code)
    if problem is not None:
        assert err["problems"] == [problem]
    else:
        assert err["problems"][0]["message"].startswith("2020-01-01T01:00:00+01:00 is in the past")


async def test_refusals(api: tuple[TestClient[Any, Any], Steps]) -> None:
    client, _ = api
    await client.post("/v1/jobs", json={"name": "demo", "at": "2099-01-01T02:00:00+01:00"})
    err = await error_of(await client.post("/v1/jobs", json={"name": "demo"}), 409, "conflict")
    assert err["message"] == ("a demo job is already scheduled (job 1, due at "
                              "2099-01-01T02:00:00+01:00)")
    err = await error_of(await client.get("/v1/jobs/99"), 404, "not_found")
    assert err["message"] == "no job 99"
    err = await error_of(await client.get("/v1/jobs/x1"), 404, "not_found")
    assert err["message"] == "no job x1: job ids are numbers"
    # other scripts' digits and a number too long to be an id are not ids either
    err = await error_of(await client.get("/v1/jobs/%C2%B2"), 404, "not_found")
    assert err["message"] == "no job ²: job ids are numbers"
    err = await error_of(await client.get("/v1/jobs/" + "9" * 5000), 404, "not_found")
    assert err["message"] == f"no job {'9' * 40}: job ids are numbers"
    err = await error_of(await client.post("/v1/jobs/99/cancel", json={}), 404, "not_found")
    await client.post("/v1/jobs/1/cancel", json={})
    err = await error_of(await client.post("/v1/jobs/1/cancel", json={}), 409, "conflict")
    assert err["message"] == "job 1 is cancelled: only a scheduled or running job can be cancelled"


# --- the CLI against a real unix socket -------------------------------------------------------


class Agent:
    """The jobs API served on a unix socket by a loop in another thread (the CLI blocks)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.socket = str(tmp_path / "agent.sock")
        self.steps = Steps()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self) -> None:
        self.runner = make_runner(self.tmp_path, self.steps)
        self.task = asyncio.create_task(self.runner.run())
        self.web = web.AppRunner(make_app(self.runner))
        await self.web.setup()
        await web.UnixSite(self.web, self.socket).start()

    async def _stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.web.cleanup()

    def close(self) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    monkeypatch.setattr(jobs_cli, "POLL_S", 0.01)
    running = Agent(tmp_path)
    yield running
    running.close()


def voxnode(agent: Agent, *argv: str) -> int:
    """`voxnode jobs …` parsed and run as agent.cli.main does it (--json after a command)."""
    parser = argparse.ArgumentParser(prog="voxnode")
    parser.add_argument("--json", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    json_after = argparse.ArgumentParser(add_help=False)
    json_after.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    def add(group: Any, name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help_text, parents=[json_after])
        p.set_defaults(handler=handler)
        return p

    jobs_cli.register(sub, add)
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(Client(agent.socket, timeout=10), args)
        return code
    except VoxnodeError as exc:
        output.error(exc)
        return exc.exit_code


def test_cli_schedule_wait_success_and_failure(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert voxnode(agent, "jobs", "schedule", "demo", "--wait") == 0
    out = capsys.readouterr().out
    assert "done 1. the first step: first ok" in out
    assert "done 3. the third step: third ok" in out
    assert "Job 1 succeeded: 3 steps done." in out
    agent.steps.fail["second"] = SubsystemError("systemd could not restart x.service")
    assert voxnode(agent, "jobs", "schedule", "demo", "--wait") == 4
    captured = capsys.readouterr()
    assert "failed 2. the second step: systemd could not restart x.service" in captured.out
    assert "skipped 3. the third step: not run: step 2 (the second step) failed" in captured.out
    assert "Job 2 failed: systemd could not restart x.service" in captured.err
    assert voxnode(agent, "jobs", "show", "2") == 0
    assert "failed at step 2 of 3 (the second step)" in capsys.readouterr().out
    assert voxnode(agent, "jobs", "list", "--json") == 0
    assert '"id": 2' in capsys.readouterr().out


def test_cli_at_and_cancel(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    assert voxnode(agent, "jobs", "schedule", "demo", "--at", "25:00") == 3
    assert "--at: '25:00' is not a time of day" in capsys.readouterr().err
    assert voxnode(agent, "jobs", "schedule", "demo", "--at", "2099-01-01T02:00") == 0
    assert "Job 1 (Demo job) scheduled for 2099-01-01 02:00:00" in capsys.readouterr().out
    assert voxnode(agent, "jobs", "schedule", "demo") == 6
    assert "a demo job is already scheduled (job 1" in capsys.readouterr().err
    assert voxnode(agent, "jobs", "cancel", "1") == 0
    assert voxnode(agent, "jobs", "cancel", "1") == 6
    assert voxnode(agent, "jobs", "kinds") == 0
    assert "1. the first step" in capsys.readouterr().out


NOW = datetime.fromisoformat("2026-11-22T23:00:00+01:00")
HELP = ("give HH:MM (today, or tomorrow if that time has passed) or ISO 8601 like "
        "2026-11-23T02:00 (local time unless a zone is given)")


@pytest.mark.parametrize(("text", "expected"), [
    ("23:30", "2026-11-22T23:30:00+01:00"),
    ("02:00", "2026-11-23T02:00:00+01:00"),  # passed today: tomorrow
    ("23:00", "2026-11-23T23:00:00+01:00"),  # now is not the future
    ("2026-11-23T02:00", "2026-11-23T02:00:00+01:00"),  # local time
    ("2026-11-23 02:00:00Z", "2026-11-23T02:00:00+00:00"),  # a zone given is kept
    ("2027-07-01T02:00", "2027-07-01T02:00:00+02:00"),  # summer time
])
def test_at_accepts(text: str, expected: str) -> None:
    assert jobs_cli.parse_at(text, NOW) == datetime.fromisoformat(expected)
    assert jobs_cli.parse_at(text, NOW).utcoffset() == datetime.fromisoformat(expected).utcoffset()


@pytest.mark.parametrize(("text", "problem"), [
    ("24:00", f"'24:00' is not a time of day: {HELP}"),
    ("7pm", f"'7pm' is not a time: {HELP}"),
    ("2026-11-23", f"'2026-11-23' gives no time of day: {HELP}"),
    ("2026-11-22T22:00", "2026-11-22T22:00+01:00 is in the past"),
])
def test_at_refuses(text: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as info:
        jobs_cli.parse_at(text, NOW)
    assert info.value.message == "bad --at time"
    assert info.value.problems == [Problem("--at", problem)]
