"""The job record: what a job is, its steps, their states and progress, and its JSON form.

Owns the data only (no I/O, no clock): ``Job`` and ``JobStep`` with their state enums,
the overall progress rule and the conversion to and from the JSON kept on disk and sent on
the wire. Times are unix seconds (floats), like the event log's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the agent stopped while it ran
    CANCELLED = "cancelled"


ACTIVE = frozenset({JobState.SCHEDULED, JobState.RUNNING})


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # not needed on this node, or not run after an earlier failure
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"  # stopped by the operator while it ran


DONE_STEP = frozenset({StepState.SUCCEEDED, StepState.SKIPPED})


@dataclass
class JobStep:
    name: str  # stable, machine-readable (restart-chat)
    title: str  # what an operator reads (Restart chat)
    state: StepState = StepState.PENDING
    message: str = ""
    progress: int = 0  # 0-100
    started: float | None = None
    finished: float | None = None
    weight: float = 1.0  # its share of the job's progress (a step of the bytes it moves)
    # what it measured, for programs (the console, the benchmark): {"bytes": …, "kib_s": …}
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "state": self.state.value,
            "message": self.message, "progress": self.progress,
            "started": self.started, "finished": self.finished, "weight": self.weight,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobStep:
        return cls(
            name=str(data["name"]), title=str(data["title"]), state=StepState(data["state"]),
            message=str(data.get("message", "")), progress=int(data.get("progress", 0)),
            started=_time(data.get("started")), finished=_time(data.get("finished")),
            weight=float(data.get("weight", 1.0)),
            details=dict(data.get("details") or {}),
        )


@dataclass
class Job:
    id: int
    name: str  # the job kind (mongodb-update)
    title: str
    state: JobState
    created: float
    scheduled_at: float | None = None  # None: started as soon as it was asked for
    started: float | None = None
    finished: float | None = None
    steps: list[JobStep] = field(default_factory=list)
    result: str = ""  # the sentence an operator reads at the end (success or not)
    error: str = ""  # why it failed, was interrupted or cancelled
    params: dict[str, str] = field(default_factory=dict)  # what it was asked to do
    reached: int = 0  # the highest progress shown so far: progress never goes back
    eta_s: int | None = None  # seconds left, while a step can tell

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def computed_progress(self) -> int:
        """0-100 over all steps, each by its weight. Steps skipped as not needed count as
        done; nothing after a failed, interrupted or cancelled step counts."""
        weights = sum(max(0.0, s.weight) for s in self.steps)
        if weights <= 0:
            return 0
        total = 0.0
        for step in self.steps:
            share = max(0.0, step.weight) / weights
            if step.state in (StepState.FAILED, StepState.INTERRUPTED, StepState.CANCELLED):
                total += share * step.progress
                break
            total += share * (100 if step.state in DONE_STEP else step.progress)
        return min(100, int(total))

    @property
    def progress(self) -> int:
        """0-100, never lower than shown before (``reached``): a step that learns how much
        is left re-weighs the steps, which must not move the bar back. A job cancelled
        before it ran did nothing."""
        if self.state is JobState.SUCCEEDED:
            return 100
        if not self.steps or (self.state is JobState.CANCELLED and self.started is None):
            return 0
        return max(self.reached, self.computed_progress())

    def current_step(self) -> JobStep | None:
        return next((s for s in self.steps if s.state is StepState.RUNNING), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "title": self.title, "state": self.state.value,
            "created": self.created, "scheduled_at": self.scheduled_at,
            "started": self.started, "finished": self.finished, "progress": self.progress,
            "steps": [s.to_dict() for s in self.steps],
            "result": self.result, "error": self.error, "params": dict(self.params),
            "reached": self.reached, "eta_s": self.eta_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """The record as written by ``to_dict``; raises KeyError/ValueError/TypeError if not."""
        steps = data.get("steps", [])
        if not isinstance(steps, list):
            raise TypeError("steps is not a list")
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise TypeError("params is not a mapping")
        eta = data.get("eta_s")
        return cls(
            id=int(data["id"]), name=str(data["name"]), title=str(data["title"]),
            state=JobState(data["state"]), created=float(data["created"]),
            scheduled_at=_time(data.get("scheduled_at")), started=_time(data.get("started")),
            finished=_time(data.get("finished")),
            steps=[JobStep.from_dict(s) for s in steps],
            result=str(data.get("result", "")), error=str(data.get("error", "")),
            params={str(k): str(v) for k, v in params.items()},
            reached=int(data.get("reached", 0)), eta_s=None if eta is None else int(eta),
        )


def _time(value: Any) -> float | None:
    return None if value is None else float(value)
