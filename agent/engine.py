"""The change pipeline: validate → check → observe → plan → apply per subsystem → commit.

Owns the subsystems' contract at run time (``agent.subsystems.base``: one owner per key of
the document, checked when the engine is built), the one lock under which the desired
state changes, the rollback when a subsystem fails, and the confirmed-apply timer (a
change that is not confirmed in time is rolled back automatically, so a bad network change
cannot lock the administrator out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.change_options import DEFAULT_OPTIONS, ChangeOptions
from agent.errors import (
    ApplyFailed,
    ConfirmationRequired,
    Conflict,
    InvalidInput,
    Problem,
    SubsystemError,
    VoxnodeError,
)
from agent.events import EventLog
from agent.ports.files import durable
from agent.state.diff import FieldChange, diff_documents
from agent.state.model import DesiredState
from agent.state.store import Pending, RevisionMeta, Store
from agent.subsystems.base import Change, PlanItem, Subsystem, SubsystemPlan, check_ownership

log = logging.getLogger("voxnode.engine")


@dataclass
class Plan:
    base_revision: int
    fields: list[FieldChange]
    subsystems: list[SubsystemPlan]

    @property
    def acknowledge(self) -> list[PlanItem]:
        return [a for p in self.subsystems for a in p.acknowledge]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_revision": self.base_revision,
            "fields": [f.to_dict() for f in self.fields],
            "subsystems": [p.to_dict() for p in self.subsystems if not p.empty],
            "acknowledge": [a.to_dict() for a in self.acknowledge],
        }


@dataclass
class Outcome:
    """What an apply did: the plan, the changes made, the revision committed (if any)."""

    plan: Plan
    dry_run: bool = False
    revision: RevisionMeta | None = None
    changes: dict[str, list[Change]] = field(default_factory=dict)
    confirm_deadline: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "plan": self.plan.to_dict(),
            "revision": self.revision.to_dict() if self.revision else None,
            "changes": {k: [c.to_dict() for c in v] for k, v in self.changes.items() if v},
            "confirm_deadline": self.confirm_deadline,
        }


class Engine:
    def __init__(
        self,
        store: Store,
        subsystems: Sequence[Subsystem[Any]],
        events: EventLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_ownership(subsystems)  # raises OwnershipConflict
        self.store = store
        self.subsystems = list(subsystems)
        self.events = events
        self.clock = clock
        self.lock = asyncio.Lock()
        self._confirm_task: asyncio.Task[None] | None = None
        self.last_converge: dict[str, Any] = {"ok": None, "time": None, "message": "not yet"}

    # --- start-up ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-converge the committed revision, then resolve a confirmed apply left pending."""
        async with self.lock:
            current = self.store.current()
            if current is None:
                self.events.emit(
                    "agent.unconfigured", "no committed revision yet; nothing to apply"
                )
                self._record_converge(True, "no configuration yet")
            else:
                try:
                    changes = await self._apply_all(None, current.state)
                except SubsystemError as exc:
                    self._record_converge(False, exc.message)
                    self.events.emit(
                        "config.converge-failed",
                        f"revision {current.meta.revision}: {exc.message}",
                        level=logging.ERROR,
                    )
                else:
                    n = sum(len(v) for v in changes.values())
                    self._record_converge(True, f"revision {current.meta.revision}, {n} changes")
                    self.events.emit(
                        "config.converged",
                        f"revision {current.meta.revision} applied at start ({n} changes)",
                    )
            pending = self.store.pending()
            if pending is None:
                return
            if pending.revision != self.store.head():
                # the change it guarded was never committed (agent stopped mid-apply)
                await durable(self.store.clear_pending)
                return
        remaining = pending.deadline - self.clock()
        if remaining <= 0:
            await self._auto_rollback(pending)
        else:
            self._arm_confirm_timer(pending, remaining)

    async def stop(self) -> None:
        if self._confirm_task is not None:
            self._confirm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._confirm_task

    # --- planning ----------------------------------------------------------------------------

    async def plan(self, new: DesiredState) -> Plan:
        current = self.store.current()
        old = current.state if current else None
        problems: list[Problem] = []
        for sub in self.subsystems:
            problems.extend(await sub.check(new))
        if problems:
            raise InvalidInput(
                "the change cannot be made on this node", problems=sorted(problems)
            )
        observed = [await sub.observe(new) for sub in self.subsystems]
        return Plan(
            base_revision=current.meta.revision if current else 0,
            fields=diff_documents(old.to_document() if old else None, new.to_document()),
            subsystems=[sub.plan(old, new, seen)
                        for sub, seen in zip(self.subsystems, observed, strict=True)],
        )

    # --- applying ----------------------------------------------------------------------------

    async def apply(
        self,
        new: DesiredState,
        *,
        source: str = "apply",
        options: ChangeOptions = DEFAULT_OPTIONS,
    ) -> Outcome:
        """Plan ``new`` and, unless ``options.dry_run``, apply and commit it (the options
        were validated when they were made, limits included)."""
        async with self.lock:
            pending = self.store.pending()
            if pending is not None and not options.dry_run:
                raise Conflict(
                    f"revision {pending.revision} is waiting for confirmation",
                    remedy="Confirm it with `voxnode config confirm`, or wait for it to roll "
                    "back, then retry.",
                )
            plan = await self.plan(new)
            outcome = Outcome(plan=plan, dry_run=options.dry_run)
            if options.dry_run:
                return outcome
            if plan.acknowledge and not options.yes:
                raise ConfirmationRequired(
                    "this change deletes data that cannot be recovered",
                    problems=[Problem("", a.text) for a in plan.acknowledge],
                    details={"acknowledge": [a.to_dict() for a in plan.acknowledge]},
                )
            current = self.store.current()
            old = current.state if current else None
            if options.confirm_within is not None:
                deadline = self.clock() + options.confirm_within
                # written before the commit: a crash in between leaves a marker for a
                # revision that does not exist, which start() discards
                marker = Pending(plan.base_revision + 1, plan.base_revision, deadline)
                await durable(self.store.set_pending, marker)
            try:
                outcome.changes = await self._apply_with_rollback(old, new)
            except ApplyFailed:
                await durable(self.store.clear_pending)
                raise
            if old is not None and old == new:
                await durable(self.store.clear_pending)
                self.events.emit("config.reconverged", "document unchanged; machine re-converged")
                return outcome
            # fsyncs off the loop: heartbeats of the failover daemon share it
            outcome.revision = await durable(
                self.store.commit, new, source=source, comment=options.comment)
            self._record_converge(True, f"revision {outcome.revision.revision} applied")
            self.events.emit(
                "config.applied",
                f"revision {outcome.revision.revision} ({source})"
                + (f": {options.comment}" if options.comment else ""),
            )
            if options.confirm_within is not None:
                deadline = self.clock() + options.confirm_within
                pending = Pending(outcome.revision.revision, plan.base_revision, deadline)
                await durable(self.store.set_pending, pending)
                outcome.confirm_deadline = deadline
                self._arm_confirm_timer(pending, options.confirm_within)
            return outcome

    async def _apply_all(
        self, old: DesiredState | None, new: DesiredState, upto: int | None = None
    ) -> dict[str, list[Change]]:
        changes: dict[str, list[Change]] = {}
        for sub in self.subsystems[:upto]:
            changes[sub.name] = await sub.apply(old, new)
        return changes

    async def _apply_with_rollback(
        self, old: DesiredState | None, new: DesiredState
    ) -> dict[str, list[Change]]:
        changes: dict[str, list[Change]] = {}
        for index, sub in enumerate(self.subsystems):
            try:
                changes[sub.name] = await sub.apply(old, new)
            except Exception as exc:
                reason = exc.message if isinstance(exc, VoxnodeError) else repr(exc)
                if not isinstance(exc, VoxnodeError):
                    log.exception("subsystem %s raised an unexpected error", sub.name)
                raise await self._roll_back(old, new, index, sub.name, reason) from exc
        return changes

    async def _roll_back(
        self, old: DesiredState | None, new: DesiredState, failed: int, name: str, reason: str
    ) -> ApplyFailed:
        message = f"{name}: {reason}"
        if old is None:
            self.events.emit("config.apply-failed", f"{message}; no earlier revision to restore")
            return ApplyFailed(
                f"applying failed in {message}",
                remedy="There is no earlier revision to return to; fix the cause and retry.",
            )
        undo_errors = []
        for sub in reversed(self.subsystems[: failed + 1]):
            try:
                await sub.apply(new, old)
            except Exception as exc:
                undo_errors.append(
                    f"{sub.name}: {exc.message if isinstance(exc, VoxnodeError) else exc!r}"
                )
        if undo_errors:
            self._record_converge(False, "rollback incomplete: " + "; ".join(undo_errors))
            self.events.emit(
                "config.rollback-failed", "; ".join(undo_errors), level=logging.ERROR
            )
            return ApplyFailed(
                f"applying failed in {message}; restoring the previous revision also failed",
                problems=[Problem("rollback", text) for text in undo_errors],
                remedy="The node may be between two configurations: check `voxnode status`.",
            )
        self.events.emit(
            "config.rolled-back", f"{message}; previous revision re-applied", level=logging.WARNING
        )
        return ApplyFailed(f"applying failed in {message}; the previous revision was re-applied")

    # --- confirmed apply ---------------------------------------------------------------------

    async def confirm(self) -> RevisionMeta:
        async with self.lock:
            pending = self.store.pending()
            if pending is None or pending.revision != self.store.head():
                raise Conflict("no change is waiting for confirmation")
            await durable(self.store.clear_pending)
            if self._confirm_task is not None:
                self._confirm_task.cancel()
                self._confirm_task = None
            self.events.emit("config.confirmed", f"revision {pending.revision} confirmed")
            return self.store.meta(pending.revision)

    def _arm_confirm_timer(self, pending: Pending, delay: float) -> None:
        async def expire() -> None:
            await asyncio.sleep(delay)
            await self._auto_rollback(pending)

        self._confirm_task = asyncio.create_task(expire(), name="confirm-timer")
        self.events.emit(
            "config.awaiting-confirmation",
            f"revision {pending.revision} rolls back to {pending.previous} unless confirmed "
            f"within {delay:.0f} s",
        )

    async def _auto_rollback(self, pending: Pending) -> None:
        async with self.lock:
            if self.store.pending() != pending:
                return  # confirmed (or replaced) meanwhile
            self._confirm_task = None
            current = self.store.current()
            target = self.store.load(pending.previous) if pending.previous else None
            if current is None or target is None:
                await durable(self.store.clear_pending)
                return
            try:
                await self._apply_with_rollback(current.state, target.state)
            except ApplyFailed as exc:
                self.events.emit(
                    "config.auto-rollback-failed", exc.message, level=logging.ERROR
                )
                self._record_converge(False, exc.message)
                await durable(self.store.clear_pending)
                return
            meta = await durable(
                self.store.commit, target.state, source="auto-rollback",
                comment=f"revision {pending.revision} was not confirmed in time")
            await durable(self.store.clear_pending)
            self._record_converge(True, f"revision {meta.revision} applied")
            self.events.emit(
                "config.auto-rolled-back",
                f"revision {pending.revision} not confirmed; back to the configuration of "
                f"revision {pending.previous} as revision {meta.revision}",
                level=logging.WARNING,
            )

    # --- status ------------------------------------------------------------------------------

    def _record_converge(self, ok: bool, message: str) -> None:
        self.last_converge = {"ok": ok, "time": self.clock(), "message": message}
