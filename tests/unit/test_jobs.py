"""The job runner and the MongoDB update job, with an injected clock and the systemd fake."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.errors import Conflict, InvalidInput, NotFound, Problem, SubsystemError
from agent.events import EventLog
from agent.jobs.model import Job, JobState, JobStep, StepState
from agent.jobs.mongodb_update import mongodb_update_job
from agent.jobs.runner import JobKind, JobRunner, StepContext, StepDef, StepSkipped
from agent.jobs.store import JobStore
from agent.ports.files import FileTree
from agent.ports.licence import LicencePort, StaticLicence
from agent.ports.systemd_memory import MemorySystemd
from agent.services.catalogue import load_catalogue
from agent.services.subsystem import ServicesSubsystem, StaticRole
from agent.state.document import validate_document

T0 = 1795384800.0  # 2026-11-22T23:00:00+01:00 (Europe/Rome)
APPLIANCE_UNITS = ("nginx.service", "mariadb.service", "asterisk.service",
                   "tvox-webapi.service", "tvox-webclientproxy.service",
                   "tvox-webcustomerproxy.service", "rocketchat.service", "coturn.service",
                   "openvpn-client@mcs.service")
STANDARD = validate_document({
    "schema_version": 1,
    "network": {"hostname": "pbx1", "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}}},
})


@pytest.fixture(autouse=True)
def rome_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Times in messages are the node's local time: pin the zone so the texts are exact."""
    monkeypatch.setenv("TZ", "Europe/Rome")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class FakeClock:
    """Wall clock and sleep under the test's control: ``advance`` wakes every sleeper."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self._sleepers: list[asyncio.Future[None]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        waiter = asyncio.get_running_loop().create_future()
        self._sleepers.append(waiter)
        await waiter

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for waiter in self._sleepers:
            if not waiter.done():
                waiter.set_result(None)
        self._sleepers.clear()


class Steps:
    """A job kind for the runner's tests: three steps that record their calls; one can be
    made to fail, skip or block until released."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, Exception] = {}
        self.block: dict[str, asyncio.Event] = {}

    def step(self, name: str) -> StepDef:
        async def run(ctx: StepContext) -> str:
            self.calls.append(name)
            if name in self.block:
                ctx.report(40, f"{name} half-way")
                await self.block[name].wait()
            if name in self.fail:
                raise self.fail[name]
            return f"{name} ok"
        return StepDef(name, f"the {name} step", run)

    def kind(self, name: str = "demo") -> JobKind:
        return JobKind(name, "Demo job", "three steps",
                       tuple(self.step(n) for n in ("first", "second", "third")))


class Harness:
    def __init__(self, tmp_path: Path, keep: int = 200) -> None:
        self.tmp_path, self.keep = tmp_path, keep
        self.clock = FakeClock()
        self.steps = Steps()
        self.events = EventLog()
        self.task: asyncio.Task[None] | None = None
        self.runner = self.new_runner()

    def new_runner(self) -> JobRunner:
        runner = JobRunner(JobStore(self.tmp_path / "state", keep=self.keep), self.events,
                           clock=self.clock, sleep=self.clock.sleep)
        runner.register(self.steps.kind())
        runner.recover()
        return runner

    def start(self) -> None:
        self.task = asyncio.create_task(self.runner.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        await self.runner.flushed()

    async def settle(self, job_id: int) -> Job:
        for _ in range(1000):
            job = self.runner.get(job_id)
            if not job.active:
                return job
            await asyncio.sleep(0)
        raise AssertionError(f"job {job_id} is still {self.runner.get(job_id).state}")

    async def until(self, job_id: int, state: StepState, step: int) -> Job:
        for _ in range(1000):
            job = self.runner.get(job_id)
            if job.steps[step].state is state:
                return job
            await asyncio.sleep(0)
        raise AssertionError(f"step {step} of job {job_id} never became {state}")

    async def on_disk(self, job_id: int) -> dict[str, object]:
        await self.runner.flushed()  # records are written behind, in a worker thread
        data: dict[str, object] = json.loads(
            (self.tmp_path / "state" / "jobs" / f"{job_id:08d}.json").read_text())
        return data


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.stop()


def states(job: Job) -> list[str]:
    return [s.state.value for s in job.steps]


# --- running ----------------------------------------------------------------------------------


async def test_steps_run_in_order_with_progress(h: Harness) -> None:
    release = h.steps.block["second"] = asyncio.Event()
    h.start()
    job = (await h.runner.schedule("demo"))
    assert job.state is JobState.SCHEDULED and job.scheduled_at is None
    running = await h.until(job.id, StepState.RUNNING, 1)
    assert running.state is JobState.RUNNING
    assert states(running) == ["succeeded", "running", "pending"]
    for _ in range(100):  # the step runs as a task of its own: its first report
        if running.steps[1].progress:
            break
        await asyncio.sleep(0.01)
    assert running.steps[1].progress == 40 and running.steps[1].message == "second half-way"
    assert running.progress == (100 + 40 + 0) // 3
    assert (await h.on_disk(job.id))["state"] == "running"  # saved while it runs
    release.set()
    done = await h.settle(job.id)
    assert h.steps.calls == ["first", "second", "third"]
    assert done.state is JobState.SUCCEEDED and done.progress == 100
    assert [s.message for s in done.steps] == ["first ok", "second ok", "third ok"]
    assert done.result == "3 steps done" and done.error == ""
    assert done.started == T0 and done.finished == T0
    assert (await h.on_disk(job.id))["state"] == "succeeded"
    kinds = [e.kind for e in h.events.recent()]
    assert kinds == ["job.scheduled", "job.started", "job.step", "job.step", "job.step",
                     "job.succeeded"]
    assert h.events.recent()[-1].message == "job 1 demo succeeded: 3 steps done"


async def test_a_failed_step_stops_the_job_and_skips_the_rest(h: Harness) -> None:
    h.steps.fail["second"] = SubsystemError("systemd could not restart x.service")
    h.start()
    job = await h.settle((await h.runner.schedule("demo")).id)
    assert h.steps.calls == ["first", "second"]
    assert job.state is JobState.FAILED
    assert states(job) == ["succeeded", "failed", "skipped"]
    assert job.steps[1].message == "systemd could not restart x.service"
    assert job.steps[2].message == "not run: step 2 (the second step) failed"
    assert job.result == "failed at step 2 of 3 (the second step)"
    assert job.error == "systemd could not restart x.service"
    assert job.progress == 33
    assert h.events.recent()[-1].message == (
        "job 1 demo failed: systemd could not restart x.service")


async def test_skipped_steps_and_unexpected_errors(h: Harness) -> None:
    h.steps.fail["first"] = StepSkipped("not licensed here")
    h.start()
    job = await h.settle((await h.runner.schedule("demo")).id)
    assert states(job) == ["skipped", "succeeded", "succeeded"]
    assert job.steps[0].message == "not licensed here"
    assert job.state is JobState.SUCCEEDED and job.result == "2 steps done, 1 skipped"
    h.steps.fail = {"third": KeyError("bug")}
    job = await h.settle((await h.runner.schedule("demo")).id)
    assert job.state is JobState.FAILED and states(job) == ["succeeded", "succeeded", "failed"]
    assert job.error == "the step hit an internal error; details are in the agent's log"


async def test_a_job_runs_when_the_clock_reaches_its_time(h: Harness) -> None:
    h.start()
    job = (await h.runner.schedule("demo", at=T0 + 3600))

    async def slept(count: int) -> None:  # the scheduler went round to its next sleep
        for _ in range(2000):
            if len(h.clock.sleeps) >= count:
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"the scheduler did not sleep again: {h.clock.sleeps}")

    await slept(1)
    assert job.state is JobState.SCHEDULED and h.steps.calls == []
    assert h.clock.sleeps[-1] == 30.0  # capped: wall-clock jumps are noticed
    h.clock.advance(1800)
    await slept(2)
    assert job.state is JobState.SCHEDULED and h.steps.calls == []
    h.clock.advance(1799)
    await slept(3)
    assert job.state is JobState.SCHEDULED and h.clock.sleeps[-1] == 1.0
    h.clock.advance(1)
    done = await h.settle(job.id)
    assert done.state is JobState.SUCCEEDED and done.started == T0 + 3600
    assert h.events.recent()[0].message == (
        "job 1 demo scheduled for 2026-11-23T00:00:00+01:00")


async def test_cancel_a_scheduled_job(h: Harness) -> None:
    h.start()
    job = (await h.runner.schedule("demo", at=T0 + 60))
    cancelled = h.runner.cancel(job.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.error == "cancelled by the operator"
    assert states(cancelled) == ["skipped"] * 3
    assert cancelled.steps[0].message == "not run: the job was cancelled"
    h.clock.advance(120)
    await asyncio.sleep(0.01)
    assert h.steps.calls == []
    with pytest.raises(Conflict) as info:
        h.runner.cancel(job.id)
    assert info.value.message == ("job 1 is cancelled: only a scheduled or running job can be "
                                  "cancelled")
    assert (await h.runner.schedule("demo")).id == 2  # a cancelled job no longer conflicts


# --- refusals ---------------------------------------------------------------------------------


async def test_bad_requests_are_refused_exactly(h: Harness) -> None:
    with pytest.raises(InvalidInput) as bad:
        (await h.runner.schedule("mongodb"))
    assert bad.value.message == "unknown job kind"
    assert bad.value.problems == [Problem("name", "'mongodb' is not a job kind (known: demo)")]
    with pytest.raises(InvalidInput) as past:
        (await h.runner.schedule("demo", at=T0 - 60))
    assert past.value.problems == [Problem(
        "at", "2026-11-22T22:59:00+01:00 is in the past (it is now 2026-11-22T23:00:00+01:00)")]
    first = (await h.runner.schedule("demo", at=T0 + 3600))
    with pytest.raises(Conflict) as busy:
        (await h.runner.schedule("demo"))
    assert busy.value.message == (
        "a demo job is already scheduled (job 1, due at 2026-11-23T00:00:00+01:00)")
    assert busy.value.remedy == "Wait for it to end, or cancel it: voxnode jobs cancel 1"
    with pytest.raises(NotFound) as missing:
        h.runner.cancel(99)
    assert missing.value.message == "no job 99"
    assert [j.id for j in h.runner.jobs()] == [first.id]


async def test_a_running_job_conflicts_and_cannot_be_cancelled(h: Harness) -> None:
    release = h.steps.block["first"] = asyncio.Event()
    h.start()
    job = (await h.runner.schedule("demo"))
    await h.until(job.id, StepState.RUNNING, 0)
    with pytest.raises(Conflict) as busy:
        (await h.runner.schedule("demo"))
    assert busy.value.message == "a demo job is already running (job 1)"
    with pytest.raises(Conflict) as running:
        h.runner.cancel(job.id)
    assert running.value.message == ("job 1 is running, and a demo job is not stopped "
                                     "half-way")
    assert running.value.remedy == "Wait for it to end."
    release.set()
    assert (await h.settle(job.id)).state is JobState.SUCCEEDED


# --- surviving a restart ----------------------------------------------------------------------


async def test_an_agent_stop_marks_the_running_job_interrupted(h: Harness) -> None:
    h.steps.block["second"] = asyncio.Event()  # never released
    h.start()
    job = (await h.runner.schedule("demo"))
    await h.until(job.id, StepState.RUNNING, 1)
    await h.stop()  # what the daemon does on SIGTERM
    assert job.state is JobState.INTERRUPTED
    assert (await h.on_disk(job.id))["state"] == "interrupted"
    assert h.new_runner().get(job.id).error == (
        "the agent stopped while step 2 of 3 (the second step) was running; "
        "the job did not finish")


def _record(job_id: int, state: JobState, steps: list[StepState], at: float | None) -> Job:
    return Job(id=job_id, name="demo", title="Demo job", state=state, created=T0 - 7200,
               scheduled_at=at, started=T0 - 10 if state is JobState.RUNNING else None,
               steps=[JobStep(n, f"the {n} step", s)
                      for n, s in zip(("first", "second", "third"), steps, strict=True)])


async def test_recovery_after_a_crash(h: Harness) -> None:
    store = JobStore(h.tmp_path / "state")
    pending = [StepState.PENDING] * 3
    for record in (_record(4, JobState.RUNNING,
                           [StepState.SUCCEEDED, StepState.RUNNING, StepState.PENDING], None),
                   _record(5, JobState.SCHEDULED, pending, T0 + 600),
                   _record(6, JobState.SCHEDULED, pending, T0 - 3600)):  # 6: missed by an hour
        await asyncio.to_thread(store.save, record)
    (h.tmp_path / "state" / "jobs" / "00000007.json").write_text("{torn")
    (h.tmp_path / "state" / "jobs" / ".00000008.json.x.tmp").write_text("")
    h.runner = h.new_runner()
    crashed = h.runner.get(4)
    assert crashed.state is JobState.INTERRUPTED and crashed.finished == T0
    assert states(crashed) == ["succeeded", "interrupted", "skipped"]
    assert crashed.steps[1].message == "the agent stopped during this step"
    assert crashed.steps[2].message == "not run: the job was interrupted"
    assert crashed.error == ("the agent stopped while step 2 of 3 (the second step) was "
                             "running; the job did not finish")
    missed = h.runner.get(6)
    assert missed.state is JobState.CANCELLED
    assert missed.error == ("missed: the agent was not running at 2026-11-22T22:00:00+01:00; "
                            "schedule it again")
    assert not (h.tmp_path / "state" / "jobs" / ".00000008.json.x.tmp").exists()
    with pytest.raises(NotFound):
        h.runner.get(7)  # the torn record is ignored, not fatal
    h.start()
    h.clock.advance(600)  # the scheduled job was re-armed
    assert (await h.settle(5)).state is JobState.SUCCEEDED
    assert (await h.runner.schedule("demo")).id == 8  # ids are not reused


async def test_history_keeps_the_newest_finished_jobs(tmp_path: Path) -> None:
    h = Harness(tmp_path, keep=3)
    h.start()
    waiting = (await h.runner.schedule("demo", at=T0 + 3600))
    for _ in range(4):
        h.runner.cancel(waiting.id)
        waiting = (await h.runner.schedule("demo", at=T0 + 3600))
    await h.stop()
    files = sorted(p.name for p in (tmp_path / "state" / "jobs").iterdir())
    # 4 cancelled + 1 scheduled: the oldest cancelled one is gone, the scheduled one stays
    assert files == ["00000002.json", "00000003.json", "00000004.json", "00000005.json"]
    assert [j.id for j in h.runner.jobs()] == [5, 4, 3, 2]
    assert [j.id for j in h.new_runner().jobs()] == [5, 4, 3, 2]


# --- the MongoDB update job -------------------------------------------------------------------


class Node:
    def __init__(self, tmp_path: Path, licence: LicencePort, catalogue: str = "appliance"):
        self.systemd = MemorySystemd()
        self.systemd.install(*APPLIANCE_UNITS, "kamailio.service")
        self.services = ServicesSubsystem(self.systemd, load_catalogue(catalogue), licence,
                                          StaticRole(), files=FileTree(tmp_path / "root"))
        self.runner = JobRunner(JobStore(tmp_path / "state"), EventLog())
        self.runner.register(mongodb_update_job(self.services))
        self.runner.recover()

    async def run(self) -> Job:
        task = asyncio.create_task(self.runner.run())
        try:
            job = (await self.runner.schedule("mongodb-update"))
            for _ in range(1000):
                if not job.active:
                    return job
                await asyncio.sleep(0)
            raise AssertionError(f"the job is still {job.state}")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def restarts(self) -> list[str]:
        return [unit for verb, unit in self.systemd.jobs if verb == "restart"]


LICENSED = StaticLicence(frozenset({"PBX", "CHAT", "WEB_CLIENT"}))


async def test_mongodb_update_restarts_in_order_and_skips_the_unlicensed(tmp_path: Path) -> None:
    node = Node(tmp_path, LICENSED)
    await node.services.apply(None, STANDARD)
    job = await node.run()
    assert node.restarts() == ["rocketchat.service", "tvox-webapi.service",
                               "tvox-webclientproxy.service"]
    assert job.state is JobState.SUCCEEDED and job.result == "3 steps done, 1 skipped"
    assert [s.name for s in job.steps] == ["restart-chat", "restart-webapi",
                                           "restart-webclientproxy", "restart-webcustomerproxy"]
    assert states(job) == ["succeeded", "succeeded", "succeeded", "skipped"]
    assert job.steps[0].message == "rocketchat.service restarted: active (running)"
    assert job.steps[3].message == (
        "tvox-webcustomerproxy.service does not run on this node: needs the licence module "
        "WEB_CUSTOMER; the active licence does not include it (licensed modules: CHAT, PBX, "
        "WEB_CLIENT)")


async def test_mongodb_update_fails_naming_the_unit_and_systemds_answer(tmp_path: Path) -> None:
    node = Node(tmp_path, LICENSED)
    await node.services.apply(None, STANDARD)
    node.systemd.fail("tvox-webapi.service", "restart")
    job = await node.run()
    assert node.restarts() == ["rocketchat.service", "tvox-webapi.service"]
    assert job.state is JobState.FAILED and states(job)[1:] == ["failed", "skipped", "skipped"]
    assert job.error == (
        "systemd could not restart tvox-webapi.service (webapi): the job ended with 'failed'; "
        "the unit is failed (failed), result 'exit-code'")


async def test_mongodb_update_refused_by_systemd(tmp_path: Path) -> None:
    node = Node(tmp_path, LICENSED)
    await node.services.apply(None, STANDARD)
    del node.systemd.units["rocketchat.service"]  # uninstalled behind the agent's back
    job = await node.run()
    assert job.state is JobState.FAILED and node.restarts() == []
    assert job.error == ("systemd refused to restart rocketchat.service: Unit "
                         "rocketchat.service not found. (org.freedesktop.systemd1.NoSuchUnit)")


async def test_mongodb_update_on_the_lab_and_unconfigured(tmp_path: Path) -> None:
    lab = Node(tmp_path / "lab", LICENSED, catalogue="lab")
    await lab.services.apply(None, STANDARD)
    job = await lab.run()
    assert job.state is JobState.SUCCEEDED and states(job) == ["skipped"] * 4
    assert job.steps[0].message == "chat is not in this node's service catalogue (lab)"
    assert lab.restarts() == []
    fresh = Node(tmp_path / "fresh", LICENSED)
    job = await fresh.run()
    assert job.state is JobState.FAILED
    assert job.error == "this node has no configuration yet: the services are not managed"


# --- cancellable kinds, weighted progress, parameters ---------------------------------------


def _long_kind(cleaned: list[str], weights: tuple[float, ...] = ()) -> JobKind:
    """measure (re-weighs the rest), copy (reports progress, blocks), check."""
    gate = asyncio.Event()

    async def measure(ctx: StepContext) -> str:
        ctx.weigh({"copy": 90.0, "check": 5.0})
        return "measured"

    async def copy(ctx: StepContext) -> str:
        try:
            for part in (10, 30, 20, 60):  # a report lower than the last never shows
                ctx.report(part, f"{part}% copied", eta_s=100 - part)
                await asyncio.sleep(0)
            await gate.wait()
        except asyncio.CancelledError:
            cleaned.append("copy")
            raise
        return "copied"

    async def check(ctx: StepContext) -> str:
        return "checked"

    async def admit(params: dict[str, object]) -> dict[str, str]:
        what = params.pop("what", "all")
        if params or what not in ("all", "db"):
            raise InvalidInput("bad", problems=[Problem("params.what", "all or db")])
        return {"what": str(what)}

    return JobKind("long", "Long job", "cancellable", (
        StepDef("measure", "measure", measure), StepDef("copy", "copy", copy),
        StepDef("check", "check", check)), cancellable=True, admit=admit,
        weights=weights or (5.0, 47.5, 47.5))


async def test_a_running_cancellable_job_is_cancelled_with_its_clean_up(h: Harness) -> None:
    cleaned: list[str] = []
    h.runner.register(_long_kind(cleaned))
    h.start()
    job = await h.runner.schedule("long", params={"what": "db"})
    assert job.params == {"what": "db"}
    seen: list[int] = []
    for _ in range(200):
        seen.append(job.progress)
        if job.steps[1].progress == 60:
            break
        await asyncio.sleep(0)
    assert seen == sorted(seen), seen  # never backwards, re-weighing included
    assert job.steps[1].progress == 60 and job.eta_s == 40
    # 5 % measured, then copy's 90 of 100 at 60 %: 5 + 54
    assert job.progress == 59
    h.runner.cancel(job.id)
    ended = await h.runner.cancelled(job.id)
    assert ended.state is JobState.CANCELLED and cleaned == ["copy"]
    assert states(ended) == ["succeeded", "cancelled", "skipped"]
    assert ended.error == "cancelled by the operator during step 2 of 3 (copy)"
    assert ended.progress == 59 and ended.eta_s is None  # what it reached, not 0
    on_disk = await h.on_disk(job.id)
    assert on_disk["state"] == "cancelled" and on_disk["params"] == {"what": "db"}
    # the runner goes on with the next job
    again = await h.runner.schedule("demo")
    assert (await h.settle(again.id)).state is JobState.SUCCEEDED


async def test_parameters_are_admitted_by_the_kind(h: Harness) -> None:
    h.runner.register(_long_kind([]))
    with pytest.raises(InvalidInput):
        await h.runner.schedule("long", params={"what": "everything"})
    with pytest.raises(InvalidInput) as none:
        await h.runner.schedule("demo", params={"x": "1"})
    assert [p.path for p in none.value.problems] == ["params.x"]
    assert h.runner.jobs() == []  # nothing recorded


async def test_an_agent_stop_during_a_cancellable_step_is_an_interruption(h: Harness) -> None:
    cleaned: list[str] = []
    h.runner.register(_long_kind(cleaned))
    h.start()
    job = await h.runner.schedule("long")
    for _ in range(200):
        if job.steps[1].progress == 60:
            break
        await asyncio.sleep(0)
    await h.stop()
    assert job.state is JobState.INTERRUPTED and cleaned == ["copy"]
    assert states(job) == ["succeeded", "interrupted", "skipped"]


def test_progress_by_weight_and_never_below_what_was_shown() -> None:
    job = Job(1, "k", "K", JobState.RUNNING, T0, started=T0, steps=[
        JobStep("a", "a", StepState.SUCCEEDED, weight=1.0),
        JobStep("b", "b", StepState.RUNNING, progress=50, weight=3.0)])
    assert job.progress == 25 + 37
    job.reached = job.progress
    job.steps[1].weight = 99.0  # re-weighed: computed 1 + 49.5, shown stays 62
    assert job.computed_progress() == 50 and job.progress == 62
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))).progress == 62
    unrun = Job(2, "k", "K", JobState.CANCELLED, T0, steps=[JobStep("a", "a")])
    assert unrun.progress == 0
