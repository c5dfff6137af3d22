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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "state": self.state.value,
            "message": self.message, "progress": self.progress,
            "started": self.started, "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobStep:
        return cls(
            name=str(data["name"]), title=str(data["title"]), state=StepState(data["state"]),
            message=str(data.get("message", "")), progress=int(data.get("progress", 0)),
            started=_time(data.get("started")), finished=_time(data.get("finished")),
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

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def progress(self) -> int:
        """0-100 over all steps. Steps skipped as not needed count as done; nothing after
        a failed or interrupted step counts, and a cancelled job did nothing."""
        if self.state is JobState.SUCCEEDED:
            return 100
        if self.state is JobState.CANCELLED or not self.steps:
            return 0
        total = 0
        for step in self.steps:
            if step.state in (StepState.FAILED, StepState.INTERRUPTED):
                total += step.progress
                break
            total += 100 if step.state in DONE_STEP else step.progress
        return total // len(self.steps)

    def current_step(self) -> JobStep | None:
        return next((s for s in self.steps if s.state is StepState.RUNNING), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "title": self.title, "state": self.state.value,
            "created": self.created, "scheduled_at": self.scheduled_at,
            "started": self.started, "finished": self.finished, "progress": self.progress,
            "steps": [s.to_dict() for s in self.steps],
            "result": self.result, "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """The record as written by ``to_dict``; raises KeyError/ValueError/TypeError if not."""
        steps = data.get("steps", [])
        if not isinstance(steps, list):
            raise TypeError("steps is not a list")
        return cls(
            id=int(data["id"]), name=str(data["name"]), title=str(data["title"]),
            state=JobState(data["state"]), created=float(data["created"]),
            scheduled_at=_time(data.get("scheduled_at")), started=_time(data.get("started")),
            finished=_time(data.get("finished")),
            steps=[JobStep.from_dict(s) for s in steps],
            result=str(data.get("result", "")), error=str(data.get("error", "")),
        )


def _time(value: Any) -> float | None:
    return None if value is None else float(value)
