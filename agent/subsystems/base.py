"""The contract every subsystem follows.

A subsystem owns part of the desired state (``owns``: top-level keys). The engine calls,
in order: ``check`` (preconditions against the machine's environment, e.g. the licence),
``plan`` (pure: what would change between two documents), then ``apply`` (idempotent:
converge the machine to ``new`` and return what it actually changed). Re-applying a
converged state must return no changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agent.errors import Problem
from agent.state.model import DesiredState


@dataclass(frozen=True)
class Change:
    """One thing a subsystem changed (or would change) on the machine."""

    action: str  # e.g. "add", "remove", "write", "delete", "set", "up"
    target: str  # e.g. "address 10.0.0.11/24 on eth0", "/etc/hostname"
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.action} {self.target}"
        return f"{text} ({self.detail})" if self.detail else text

    def to_dict(self) -> dict[str, str]:
        return {"action": self.action, "target": self.target, "detail": self.detail}


@dataclass(frozen=True)
class SubsystemPlan:
    """What a change means for one subsystem, before anything is touched.

    ``steps``: human sentences of what will be done. ``warnings``: side effects the operator
    should know (a service restart, phones to re-provision). ``acknowledge``: losses that
    need explicit consent (``--yes``) before the change is applied.
    """

    subsystem: str
    steps: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    acknowledge: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.steps or self.warnings or self.acknowledge)

    def to_dict(self) -> dict[str, object]:
        return {
            "subsystem": self.subsystem,
            "steps": list(self.steps),
            "warnings": list(self.warnings),
            "acknowledge": list(self.acknowledge),
        }


class Subsystem(Protocol):
    name: str
    owns: tuple[str, ...]

    async def check(self, new: DesiredState) -> list[Problem]:
        """Problems with ``new`` that depend on the node (licence, hardware), not the text."""
        ...

    def plan(self, old: DesiredState | None, new: DesiredState) -> SubsystemPlan:
        """Pure: describe the transition from ``old`` (None at first boot) to ``new``."""
        ...

    async def apply(self, old: DesiredState | None, new: DesiredState) -> list[Change]:
        """Converge the machine to ``new``; raise SubsystemError on failure."""
        ...
