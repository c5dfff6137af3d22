"""The contract every subsystem follows, and the engine's check that it is kept.

A subsystem owns part of the desired state (``owns``: top-level keys of the document; no
key has two owners, ``check_ownership``). For a change the engine calls, in order:

- ``check(new)``: preconditions that depend on the node (the licence, say); problems
  refuse the change;
- ``observe(new)``: async, may do I/O (file reads through a worker thread, D-Bus, the
  licence): what the plan needs from the machine, returned as a typed observation;
- ``plan(old, new, observed)``: pure, from the two documents and the observation only: no
  I/O, nothing remembered from an earlier call;
- ``apply(old, new)``: idempotent: converge the machine to ``new`` and return what it
  actually changed. Re-applying a converged state must return no changes.

Plan steps, warnings and acknowledgements are ``PlanItem``: a stable kebab-case ``code``
and its ``params`` (JSON scalars) for programs such as the web console, and the sentence
``text`` an operator reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from agent.errors import Problem, VoxnodeError
from agent.state.model import DesiredState

Scalar = str | int | float | bool | None
_CODE_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_SCALARS = (str, int, float, bool, type(None))


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
class PlanItem:
    """One step, warning or acknowledgement of a plan.

    ``code`` names the sentence's template (stable, kebab-case, unique across subsystems);
    ``params`` are its variable parts; ``text`` is the sentence itself.
    """

    code: str
    text: str
    params: Mapping[str, Scalar] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not _CODE_RE.match(self.code):
            raise ValueError(f"plan item code {self.code!r} is not kebab-case")
        if not self.text:
            raise ValueError(f"plan item {self.code} has no text")
        bad = sorted(k for k, v in self.params.items() if not isinstance(v, _SCALARS))
        if bad:
            raise ValueError(f"plan item {self.code}: params {', '.join(bad)} are not JSON "
                             "scalars")

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, object]:
        return {"code": str(self.code), "params": dict(self.params), "text": self.text}


def item(code: str, text: str, **params: Scalar) -> PlanItem:
    """A plan item: ``item("address-add", "eth0: add 10.0.0.11/24", interface="eth0", …)``."""
    return PlanItem(code, text, params)


def joined(values: Iterable[object]) -> str:
    """A list as one param: its items comma-separated ("" for none)."""
    return ",".join(str(v) for v in values)


def texts(items: Iterable[PlanItem]) -> tuple[str, ...]:
    return tuple(i.text for i in items)


@dataclass(frozen=True)
class SubsystemPlan:
    """What a change means for one subsystem, before anything is touched.

    ``steps``: what will be done. ``warnings``: side effects the operator should know (a
    service restart, phones to re-provision). ``acknowledge``: losses that need explicit
    consent (``--yes``) before the change is applied.
    """

    subsystem: str
    steps: tuple[PlanItem, ...] = ()
    warnings: tuple[PlanItem, ...] = ()
    acknowledge: tuple[PlanItem, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.steps or self.warnings or self.acknowledge)

    def to_dict(self) -> dict[str, object]:
        return {
            "subsystem": self.subsystem,
            "steps": [s.to_dict() for s in self.steps],
            "warnings": [w.to_dict() for w in self.warnings],
            "acknowledge": [a.to_dict() for a in self.acknowledge],
        }


Observed = TypeVar("Observed")


class Subsystem(Protocol[Observed]):
    name: str
    owns: tuple[str, ...]

    async def check(self, new: DesiredState) -> list[Problem]:
        """Problems with ``new`` that depend on the node (licence, hardware), not the text."""
        ...

    async def observe(self, new: DesiredState) -> Observed:
        """What ``plan`` needs from the machine (may do I/O; never on the loop for files)."""
        ...

    def plan(self, old: DesiredState | None, new: DesiredState, observed: Observed
             ) -> SubsystemPlan:
        """Pure: describe the transition from ``old`` (None at first boot) to ``new``."""
        ...

    async def apply(self, old: DesiredState | None, new: DesiredState) -> list[Change]:
        """Converge the machine to ``new``; raise SubsystemError on failure."""
        ...


class Owner(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def owns(self) -> tuple[str, ...]: ...


class OwnershipConflict(VoxnodeError):
    """Two subsystems claim one part of the desired state, or one claims no such part."""

    code = "ownership_conflict"
    default_remedy = ("Each top-level key of the desired state has one owning subsystem: "
                      "correct the subsystems the agent is built with.")


def check_ownership(subsystems: Iterable[Owner]) -> None:
    """Refuse two subsystems of one name, or owning one key, or a key the document lacks."""
    keys = tuple(DesiredState.model_fields)
    names: set[str] = set()
    owner: dict[str, str] = {}
    for sub in subsystems:
        if sub.name in names:
            raise OwnershipConflict(f"two subsystems are named {sub.name}")
        names.add(sub.name)
        for key in sub.owns:
            if key not in keys:
                raise OwnershipConflict(
                    f"subsystem {sub.name} owns '{key}', which is not a top-level key of the "
                    f"desired state (keys: {', '.join(keys)})")
            if key in owner:
                raise OwnershipConflict(
                    f"subsystems {owner[key]} and {sub.name} both own '{key}' of the desired "
                    "state")
            owner[key] = sub.name
