"""The job runner: the registry of job kinds, scheduling, running steps, and recovery.

Owns every job of the node while the agent runs. A *job kind* (``JobKind``) is a name, a
title and an ordered list of steps (``StepDef``), each an async function that returns the
sentence shown when it succeeds, raises ``StepSkipped`` when the step is not needed on this
node, or raises a ``VoxnodeError`` whose message says what failed. ``schedule()`` records a
job (now, or at a time); ``run()`` is the scheduler task: it starts due jobs one at a time,
runs their steps in order, stops at the first failed step (the rest are ``skipped``), saves
the record after every change and reports to the event log.

Crash safety: ``recover()`` runs once at start-up, before ``run()``. A job found
``running`` was cut short by a crash or a stop: it becomes ``interrupted``, naming the step
it was in, and is never resumed (a half-done restart sequence is for the operator to
judge). Scheduled jobs stay scheduled; one whose time passed more than ``missed_grace``
seconds ago is cancelled rather than run at an hour nobody chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.errors import Conflict, InvalidInput, NotFound, Problem, StoreError, VoxnodeError
from agent.events import EventLog
from agent.jobs.model import Job, JobState, JobStep, StepState
from agent.jobs.store import JobStore
from agent.ports.files import durable

log = logging.getLogger("voxnode.jobs")

MISSED_GRACE_S = 15 * 60.0  # an agent restart or upgrade around the scheduled time
MAX_SLEEP_S = 30.0  # wall-clock jumps (NTP, suspend) are noticed within this
CANCEL_WAIT_S = 30.0  # a cancelled step has this long to clean up before the answer

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class StepSkipped(Exception):
    """Raised by a step that is not needed on this node; ``reason`` is shown with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepContext:
    """What a running step may do: report its progress (0-100), a message and the job's
    time left; weigh the steps still to come (their shares of the job's progress)."""

    def __init__(self, runner: JobRunner, job: Job, step: JobStep) -> None:
        self._runner, self.job, self.step = runner, job, step

    @property
    def params(self) -> dict[str, str]:
        return self.job.params

    def report(self, progress: int, message: str = "", *, eta_s: float | None = None) -> None:
        self.step.progress = max(self.step.progress, max(0, min(100, progress)))
        if message:
            self.step.message = message
        self.job.eta_s = None if eta_s is None else max(0, round(eta_s))
        self._runner._save(self.job)

    def detail(self, **values: Any) -> None:
        """Measured values of this step, kept with it (``details``)."""
        self.step.details.update(values)
        self._runner._save(self.job)

    def weigh(self, weights: dict[str, float]) -> None:
        """New shares for named steps (e.g. by the bytes each will move, once known). The
        bar never moves back for it: the job's progress keeps the highest value shown."""
        for step in self.job.steps:
            if step.name in weights:
                step.weight = max(0.0, float(weights[step.name]))
        self._runner._save(self.job)


StepFunction = Callable[[StepContext], Awaitable[str]]


@dataclass(frozen=True)
class StepDef:
    name: str
    title: str
    run: StepFunction


# checks a request for a job of the kind and returns its parameters as they will be kept;
# raises a VoxnodeError (InvalidInput, Conflict) that refuses the request
Admit = Callable[[dict[str, Any]], Awaitable[dict[str, str]]]


async def _no_params(params: dict[str, Any]) -> dict[str, str]:
    if params:
        raise InvalidInput("this job takes no parameters", problems=[
            Problem(f"params.{k}", "unknown parameter") for k in sorted(params)])
    return {}


@dataclass(frozen=True)
class JobKind:
    name: str
    title: str
    description: str
    steps: tuple[StepDef, ...]
    # a running job of this kind may be cancelled: its step is cancelled (its own clean-up
    # runs) and the job ends cancelled; else only a scheduled one may be
    cancellable: bool = False
    admit: Admit = _no_params
    weights: tuple[float, ...] = ()  # the steps' first shares of the progress (default 1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description,
                "cancellable": self.cancellable,
                "steps": [{"name": s.name, "title": s.title} for s in self.steps]}


def format_time(ts: float) -> str:
    """A time as the node's local ISO 8601 with its offset (2026-11-23T02:00:00+01:00)."""
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


class JobRunner:
    def __init__(
        self, store: JobStore, events: EventLog, *, clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep, missed_grace: float = MISSED_GRACE_S,
    ) -> None:
        self.store = store
        self.events = events
        self._clock = clock
        self._sleep = sleep
        self._missed_grace = missed_grace
        self._kinds: dict[str, JobKind] = {}
        self._jobs: dict[int, Job] = {}
        self._next_id = 1
        self._recovered = False
        self._wake = asyncio.Event()
        # records waiting to be written (None: to be deleted), newest state per job: the
        # writes fsync, so they run in a worker thread, never on the event loop
        self._unsaved: dict[int, bytes | None] = {}
        self._writer: asyncio.Task[None] | None = None
        self._step_task: tuple[int, asyncio.Future[str]] | None = None  # (job, its step)
        self._cancelling: set[int] = set()
        self._ended = asyncio.Event()  # set whenever a job ends

    # --- kinds and queries --------------------------------------------------------------------

    def register(self, kind: JobKind) -> None:
        if kind.name in self._kinds:
            raise ValueError(f"job kind {kind.name} is registered twice")
        self._kinds[kind.name] = kind

    def kinds(self) -> list[JobKind]:
        return sorted(self._kinds.values(), key=lambda k: k.name)

    def jobs(self) -> list[Job]:
        """Every job kept, newest first."""
        return sorted(self._jobs.values(), key=lambda j: j.id, reverse=True)

    def get(self, job_id: int) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}",
                           remedy="See the jobs kept with `voxnode jobs list`.")
        return job

    # --- start-up -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Load the history; mark jobs cut short as interrupted; drop missed schedules."""
        self.store.open()
        now = self._clock()
        for job in self.store.load_all():
            self._jobs[job.id] = job
            if job.state is JobState.RUNNING:
                self._interrupt(job, now)
            elif (job.state is JobState.SCHEDULED and job.scheduled_at is not None
                  and job.scheduled_at < now - self._missed_grace):
                missed = format_time(job.scheduled_at)
                self._end_unrun(job, now, JobState.CANCELLED, f"missed: the agent was not "
                                f"running at {missed}; schedule it again")
        self._next_id = max(self.store.highest_id(), max(self._jobs, default=0)) + 1
        self._prune()
        self._recovered = True

    # --- operator requests --------------------------------------------------------------------

    async def schedule(self, name: str, at: float | None = None,
                       params: dict[str, Any] | None = None) -> Job:
        """Record a job of kind ``name`` to run now (``at`` None) or at unix time ``at``,
        with ``params`` as the kind admits them."""
        if not self._recovered:
            raise RuntimeError("JobRunner.recover() must run before jobs are scheduled")
        kind = self._kinds.get(name)
        if kind is None:
            known = ", ".join(sorted(self._kinds)) or "none on this node"
            raise InvalidInput("unknown job kind", problems=[
                Problem("name", f"'{name}' is not a job kind (known: {known})")])
        now = self._clock()
        if at is not None and at <= now:
            raise InvalidInput("the job's time is in the past", problems=[
                Problem("at", f"{format_time(at)} is in the past (it is now {format_time(now)})")])
        for other in self._jobs.values():
            if other.name == name and other.active:
                when = (f", due at {format_time(other.scheduled_at)}"
                        if other.state is JobState.SCHEDULED and other.scheduled_at else "")
                raise Conflict(
                    f"a {name} job is already {other.state.value} (job {other.id}{when})",
                    remedy=f"Wait for it to end, or cancel it: voxnode jobs cancel {other.id}",
                )
        kept = await kind.admit(dict(params or {}))
        weights = kind.weights or tuple(1.0 for _ in kind.steps)
        job = Job(id=self._next_id, name=name, title=kind.title, state=JobState.SCHEDULED,
                  created=now, scheduled_at=at, params=kept,
                  steps=[JobStep(s.name, s.title, weight=w)
                         for s, w in zip(kind.steps, weights, strict=True)])
        # written before it exists: a disk that refuses it refuses the request (StoreError)
        await durable(self.store.save, job)
        self._next_id += 1
        self._jobs[job.id] = job
        due = f"for {format_time(at)}" if at is not None else "to run now"
        self.events.emit("job.scheduled", f"job {job.id} {name} scheduled {due}")
        self._wake.set()
        return job

    def cancel(self, job_id: int) -> Job:
        """Cancel a scheduled job, or a running one of a cancellable kind (its step is
        cancelled; ``cancelled`` waits for the job to end)."""
        job = self.get(job_id)
        kind = self._kinds.get(job.name)
        running = self._step_task is not None and self._step_task[0] == job_id
        if job.state is JobState.RUNNING and kind is not None and kind.cancellable and running:
            assert self._step_task is not None
            self._cancelling.add(job_id)
            self._step_task[1].cancel()
            return job
        if job.state is JobState.RUNNING:
            raise Conflict(f"job {job_id} is running, and a {job.name} job is not stopped "
                           "half-way", remedy="Wait for it to end.")
        if job.state is not JobState.SCHEDULED:
            raise Conflict(f"job {job_id} is {job.state.value}: only a scheduled or running "
                           "job can be cancelled")
        self._end_unrun(job, self._clock(), JobState.CANCELLED, "cancelled by the operator")
        self._wake.set()
        return job

    async def cancelled(self, job_id: int) -> Job:
        """Wait (at most ``CANCEL_WAIT_S``) for a job being cancelled to end; the job."""
        job = self.get(job_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT_S):
                while job.active and job_id in self._cancelling:
                    self._ended.clear()
                    await self._ended.wait()
        return job

    # --- the scheduler ------------------------------------------------------------------------

    async def run(self) -> None:
        """Start due jobs, one at a time, until cancelled; never raises otherwise."""
        while True:
            job = self._due()
            if job is None:
                await self._idle()
                continue
            try:
                await self._execute(job)
            except Exception:
                log.exception("jobs: job %d hit an unexpected error", job.id)
                if job.active:
                    self._finish(job, JobState.FAILED, "the job hit an internal error; "
                                 "details are in the agent's log")

    def _due(self) -> Job | None:
        now = self._clock()
        due = [j for j in self._jobs.values() if j.state is JobState.SCHEDULED
               and (j.scheduled_at is None or j.scheduled_at <= now)]
        return min(due, key=lambda j: (j.scheduled_at or j.created, j.id), default=None)

    async def _idle(self) -> None:
        """Wait until the next scheduled time (at most MAX_SLEEP_S) or a new request."""
        times = [j.scheduled_at for j in self._jobs.values()
                 if j.state is JobState.SCHEDULED and j.scheduled_at is not None]
        waker = asyncio.ensure_future(self._wake.wait())
        waits: set[asyncio.Future[Any]] = {waker}
        if times:
            delay = min(max(0.0, min(times) - self._clock()), MAX_SLEEP_S)
            waits.add(asyncio.ensure_future(self._sleep(delay)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        self._wake.clear()

    async def _execute(self, job: Job) -> None:
        kind = self._kinds.get(job.name)
        job.state, job.started = JobState.RUNNING, self._clock()
        self._save(job)
        self.events.emit("job.started", f"job {job.id} {job.name} started ({job.title})")
        total = len(job.steps)
        for index, step in enumerate(job.steps, start=1):
            definition = next((d for d in kind.steps if d.name == step.name), None) if (
                kind) else None
            step.state, step.started, step.progress = StepState.RUNNING, self._clock(), 0
            self._save(job)
            try:
                if definition is None:
                    raise VoxnodeError(f"this agent version has no step {step.name} in "
                                       f"{job.name} jobs")
                task = asyncio.ensure_future(definition.run(StepContext(self, job, step)))
                self._step_task = (job.id, task)
                try:
                    message = await task
                finally:
                    self._step_task = None
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if job.id in self._cancelling and not (current and current.cancelling()):
                    self._cancelling.discard(job.id)
                    step.state, step.finished = StepState.CANCELLED, self._clock()
                    step.message = "cancelled by the operator"
                    self._skip_rest(job, "not run: the job was cancelled")
                    job.result = f"cancelled during step {index} of {total} ({step.title})"
                    self._finish(job, JobState.CANCELLED, f"cancelled by the operator during "
                                 f"step {index} of {total} ({step.title})")
                    return
                self._cancelling.discard(job.id)
                self._interrupt(job, self._clock())
                raise
            except StepSkipped as exc:
                step.state, step.message = StepState.SKIPPED, exc.reason
            except VoxnodeError as exc:
                step.state, step.message = StepState.FAILED, exc.message
            except Exception:
                log.exception("jobs: step %s of job %d hit an unexpected error", step.name, job.id)
                step.state = StepState.FAILED
                step.message = "the step hit an internal error; details are in the agent's log"
            else:
                step.state, step.message, step.progress = StepState.SUCCEEDED, message, 100
            step.finished = self._clock()
            self.events.emit(
                "job.step", f"job {job.id} {job.name}: step {index} of {total} ({step.title}) "
                f"{step.state.value}" + (f": {step.message}" if step.message else ""),
                level=logging.ERROR if step.state is StepState.FAILED else logging.INFO)
            if step.state is StepState.FAILED:
                self._skip_rest(job, f"not run: step {index} ({step.title}) failed")
                job.result = f"failed at step {index} of {total} ({step.title})"
                self._finish(job, JobState.FAILED, step.message)
                return
            self._save(job)
        skipped = sum(1 for s in job.steps if s.state is StepState.SKIPPED)
        done = total - skipped
        job.result = f"{done} step{'s' if done != 1 else ''} done" + (
            f", {skipped} skipped" if skipped else "")
        self._finish(job, JobState.SUCCEEDED, "")

    # --- record keeping -----------------------------------------------------------------------

    def _save(self, job: Job) -> None:
        """Persist a job's new state: taken now, written by the writer task; a disk problem
        is reported but does not stop the job."""
        job.reached = job.progress
        self._unsaved[job.id] = self.store.encode(job)
        self._kick()

    def _kick(self) -> None:
        if self._writer is not None and not self._writer.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_now()  # synchronous use (start-up recovery)
            return
        self._writer = loop.create_task(self._write_behind(), name="job-records")

    def _write_now(self) -> None:
        batch, self._unsaved = self._unsaved, {}
        self._write_batch(batch)

    def _write_batch(self, batch: dict[int, bytes | None]) -> None:
        for job_id, data in batch.items():
            try:
                self.store.write(job_id, data)
            except StoreError as exc:
                self.events.emit("job.store-failed", exc.message, level=logging.ERROR)

    async def _write_behind(self) -> None:
        while self._unsaved:
            # the batch is taken here, on the loop: the thread never sees the dict change
            batch, self._unsaved = self._unsaved, {}
            await durable(self._write_batch, batch)

    async def flushed(self) -> None:
        """Wait until every record taken so far is on disk."""
        while self._writer is not None and not self._writer.done():
            await self._writer

    @staticmethod
    def _skip_rest(job: Job, reason: str) -> None:
        for step in job.steps:
            if step.state is StepState.PENDING:
                step.state, step.message = StepState.SKIPPED, reason

    def _interrupt(self, job: Job, now: float) -> None:
        current = job.current_step()
        if current is not None:
            index = job.steps.index(current) + 1
            current.state, current.finished = StepState.INTERRUPTED, now
            current.message = "the agent stopped during this step"
            where = f"while step {index} of {len(job.steps)} ({current.title}) was running"
        else:
            where = "between two steps"
        self._skip_rest(job, "not run: the job was interrupted")
        job.result = "interrupted"
        self._finish(job, JobState.INTERRUPTED,
                     f"the agent stopped {where}; the job did not finish", now=now)

    def _end_unrun(self, job: Job, now: float, state: JobState, why: str) -> None:
        self._skip_rest(job, f"not run: the job was {state.value}")
        job.result = state.value
        self._finish(job, state, why, now=now)

    def _finish(self, job: Job, state: JobState, error: str, *, now: float | None = None) -> None:
        job.state, job.error, job.eta_s = state, error, None
        self._ended.set()
        job.finished = self._clock() if now is None else now
        self._save(job)
        text = f"job {job.id} {job.name} {state.value}: " + (error or job.result)
        level = {JobState.SUCCEEDED: logging.INFO, JobState.CANCELLED: logging.INFO,
                 JobState.INTERRUPTED: logging.WARNING}.get(state, logging.ERROR)
        self.events.emit(f"job.{state.value}", text, level=level)
        self._prune()

    def _prune(self) -> None:
        for job in self.store.doomed(list(self._jobs.values())):
            del self._jobs[job.id]
            self._unsaved[job.id] = None
        if self._unsaved:
            self._kick()
