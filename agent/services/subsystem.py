"""The services subsystem: the units that run on this node follow the catalogue.

Owns no part of the document (it reads ``mode``); it owns the units the catalogue names.
Which of them run depends on the licence, the node's role (``RoleSource``), the working
mode and conditions (``agent.services.catalogue.decide``). Converging stops the unwanted
units in reverse start order and disables them, then unmasks, enables and starts the
wanted ones in order, waiting for systemd's job results. It converges on every config
apply, on a role change (``on_role_change``, for the failover code), on request, and
every 30 s from ``watch``, which repairs units stopped or started by hand and reports it.
For a plan, ``observe`` reads the facts and the units' states (``agent.services.plan``).

A failure fails the apply (and the engine rolls back) only for units whose wanted state
that change decides; a unit that was already wanted and will not start is reported as an
event, so a broken application does not block, say, a network change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from agent.errors import Conflict, Problem, SubsystemError, VoxnodeError
from agent.events import EventLog
from agent.mcs import MCS_STOP_FLAG
from agent.paths import MCS_CLIENT_CONF
from agent.ports.files import FileTree, durable
from agent.ports.licence import LicencePort
from agent.ports.systemd import JOB_DONE, SystemdPort, UnitState
from agent.services.catalogue import Catalogue, Entry, Facts, RefreshHow, Role, UnitDecision
from agent.services.catalogue import decide as decide_units
from agent.services.plan import ServicesObservation, plan_services
from agent.state.model import DesiredState, WorkingMode
from agent.subsystems.base import Change, SubsystemPlan

log = logging.getLogger("voxnode.services")

LICENCE_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 30.0



def boots_by_itself(entry: Entry) -> bool:
    """Whether systemd may start the unit at boot: only if it runs in every pair role."""
    return all(role in entry.roles for role in (Role.MASTER, Role.SLAVE, Role.STANDALONE))


class RoleSource(Protocol):
    def current(self) -> Role: ...


class StaticRole:
    """The role until failover exists: set by code (``standalone`` by default)."""

    def __init__(self, role: Role = Role.STANDALONE) -> None:
        self.role = role

    def current(self) -> Role:
        return self.role


@dataclass
class Step:
    """One step of `services restart-all`, as shown while it runs."""

    index: int
    total: int
    action: str  # stop, start, reload
    unit: str
    name: str
    status: str = "pending"  # running, done, failed
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[Step], Awaitable[None]]


class ServicesSubsystem:
    name: str = "services"
    owns: tuple[str, ...] = ()

    def __init__(
        self, systemd: SystemdPort, catalogue: Catalogue, licence: LicencePort,
        role_source: RoleSource, *, files: FileTree, events: EventLog | None = None,
    ) -> None:
        self.systemd = systemd
        self.catalogue = catalogue
        self._licence = licence
        self._roles = role_source
        self._files = files
        self.events = events or EventLog()
        self._lock = asyncio.Lock()  # one convergence at a time: apply, watch, role change
        self.last: DesiredState | None = None  # the document last converged to
        self._reported: dict[str, str] = {}  # unit -> last failure reported by the watch

    # --- facts and decisions ------------------------------------------------------------------

    async def facts(self, role: Role | None = None) -> Facts:
        try:
            async with asyncio.timeout(LICENCE_TIMEOUT_S):
                licence = await self._licence.current()
        except TimeoutError:
            raise SubsystemError(
                f"the licence could not be read within {LICENCE_TIMEOUT_S:g} s; units are "
                "left as they are"
            ) from None
        configured, stopped = await durable(self._mcs_files)
        return Facts(licence, role or self._roles.current(), configured, stopped)

    def _mcs_files(self) -> tuple[bool, bool]:
        """Whether the MCS client is configured, and stopped by the operator (a worker
        thread: a stat can block on a busy disk)."""
        return self._files.exists(MCS_CLIENT_CONF), self._files.exists(MCS_STOP_FLAG)

    async def wanted(self, state: DesiredState | None) -> list[UnitDecision]:
        mode = state.mode if state else WorkingMode.STANDARD
        return decide_units(self.catalogue, mode, await self.facts())

    async def list_units(self, state: DesiredState | None) -> dict[str, Any]:
        """What `services list` shows: each unit, wanted or not and why, and its state."""
        facts = await self.facts()
        mode = state.mode if state else WorkingMode.STANDARD
        decisions = decide_units(self.catalogue, mode, facts)
        states = await self.systemd.unit_states([d.unit for d in decisions])
        rows = []
        for d, st in zip(decisions, states, strict=True):
            drift = None
            if state is None:
                drift = "not managed: this node has no configuration yet"
            elif d.wanted and not st.running:
                drift = f"wanted but {st.describe()}: the next reconcile starts it"
            elif not d.wanted and not st.stopped and st.installed:
                drift = f"not wanted but {st.describe()}: the next reconcile stops it"
            rows.append({
                "name": d.entry.name, "unit": d.unit, "description": d.entry.description,
                "wanted": d.wanted, "reason": d.reason, "state": st.describe(),
                "active_state": st.active_state, "sub_state": st.sub_state,
                "result": st.result, "enabled": st.unit_file_state or "-",
                "load_state": st.load_state, "drift": drift,
            })
        return {
            "catalogue": self.catalogue.catalogue, "role": facts.role.value, "mode": mode.value,
            "licence": {"active": facts.licence.active, "reason": facts.licence.reason,
                        "modules": sorted(facts.licence.modules)},
            "units": rows,
        }

    # --- the subsystem contract ---------------------------------------------------------------

    async def check(self, new: DesiredState) -> list[Problem]:
        return []

    async def observe(self, new: DesiredState) -> ServicesObservation:
        """The facts and unit states the plan describes (None what could not be read)."""
        facts: Facts | None = None
        units: dict[str, UnitState] | None = None
        try:
            facts = await self.facts()
            states = await self.systemd.unit_states([e.unit for e in self.catalogue.units])
            units = {s.unit: s for s in states}
        except VoxnodeError as exc:
            log.warning("services: cannot observe the units for the plan: %s", exc.message)
        return ServicesObservation(facts, units)

    def plan(self, old: DesiredState | None, new: DesiredState, observed: ServicesObservation
             ) -> SubsystemPlan:
        return plan_services(self.catalogue, old, new, observed)

    async def apply(self, old: DesiredState | None, new: DesiredState) -> list[Change]:
        facts = await self.facts()
        after = decide_units(self.catalogue, new.mode, facts)
        if old is None:
            strict = {d.unit for d in after}
        else:
            was = {d.unit: d.wanted for d in decide_units(self.catalogue, old.mode, facts)}
            strict = {d.unit for d in after if was[d.unit] != d.wanted}
        async with self._lock:
            self.last = new
            changes, failures = await self._converge(after, strict)
        for failure in failures:
            self.events.emit("services.unit-failed", failure.message, level=logging.ERROR)
        return changes

    # --- converging ---------------------------------------------------------------------------

    async def _converge(
        self, decisions: list[UnitDecision], strict: Collection[str]
    ) -> tuple[list[Change], list[SubsystemError]]:
        """Stop the unwanted (reverse order), start the wanted (in order). A failure of a
        unit in ``strict`` is raised at once; the others are collected and returned."""
        states = {s.unit: s for s in await self.systemd.unit_states([d.unit for d in decisions])}
        changes: list[Change] = []
        failures: list[SubsystemError] = []
        steps = [(d, self._stop) for d in reversed(decisions) if not d.wanted]
        steps += [(d, self._start) for d in decisions if d.wanted]
        for decision, step in steps:
            try:
                changes += await step(decision.entry, states[decision.unit])
            except SubsystemError as exc:
                if decision.unit in strict:
                    raise
                failures.append(exc)
        return changes, failures

    async def _stop(self, entry: Entry, state: UnitState) -> list[Change]:
        if not state.installed:
            return []
        changes = []
        if not state.stopped:
            await self._expect(entry, "stop", await self.systemd.stop(entry.unit, entry.timeout))
            changes.append(Change("stop", entry.unit, f"{entry.name}: found {_seen(state)}"))
        if state.enabled and await self.systemd.disable(entry.unit):
            changes.append(Change("disable", entry.unit, entry.name))
        return changes

    async def _start(self, entry: Entry, state: UnitState) -> list[Change]:
        if not state.installed:
            raise SubsystemError(
                f"{entry.unit} ({entry.name}) should run but is not installed on this node",
                remedy=f"Install the package that provides {entry.unit}, or correct the "
                "service catalogue.", details={"unit": entry.unit},
            )
        changes = []
        if state.masked:
            if await self.systemd.unmask(entry.unit):
                changes.append(Change("unmask", entry.unit, entry.name))
            state = await self.systemd.unit_state(entry.unit)
        if boots_by_itself(entry):
            if state.unit_file_state == "disabled" and await self.systemd.enable(entry.unit):
                changes.append(Change("enable", entry.unit, entry.name))
        elif state.enabled and await self.systemd.disable(entry.unit):
            # a role-bound unit must not start at boot before the pair has decided the
            # node's role (a rebooted master would run the PBX as a slave): the agent
            # starts it once the role is known
            changes.append(Change("disable", entry.unit, f"{entry.name}: started by the agent"))
        if not state.running:
            if state.active_state == "failed":  # else a start rate limit hit would refuse it
                await self.systemd.reset_failed(entry.unit)
            await self._expect(entry, "start", await self.systemd.start(entry.unit, entry.timeout))
            changes.append(Change("start", entry.unit, f"{entry.name}: found {_seen(state)}"))
        return changes

    async def _expect(self, entry: Entry, verb: str, result: str) -> None:
        """A job result other than ``done`` becomes an error with the unit's own result."""
        if result == JOB_DONE:
            return
        try:
            after = await self.systemd.unit_state(entry.unit)
            now = f"; the unit is {after.describe()}, result '{after.result or 'none'}'"
        except SubsystemError:
            now = ""
        raise SubsystemError(
            f"systemd could not {verb} {entry.unit} ({entry.name}): the job ended with "
            f"'{result}'{now}",
            remedy=f"See `systemctl status {entry.unit}` and `journalctl -u {entry.unit}`.",
            details={"unit": entry.unit, "job_result": result},
        )

    async def reconcile(self) -> tuple[list[Change], list[SubsystemError]]:
        """Converge to the last applied document now; nothing before the first apply."""
        state = self.last
        if state is None:
            return [], []
        facts = await self.facts()
        async with self._lock:
            return await self._converge(decide_units(self.catalogue, state.mode, facts), ())

    async def watch_step(self) -> list[Change]:
        """One round of the watch: converge, and report what had drifted (a unit stopped or
        started by hand) and what could not be repaired (once per new failure)."""
        try:
            changes, failures = await self.reconcile()
        except VoxnodeError as exc:
            if self._reported.get("") != exc.message:
                self.events.emit("services.reconcile-failed", exc.message, level=logging.ERROR)
            self._reported = {"": exc.message}
            return []
        for change in changes:
            kind = "services.restarted" if change.action == "start" else (
                f"services.{change.action}")
            self.events.emit(kind, f"{change.target} ({change.detail}): {change.action} done "
                             "by the periodic reconcile", level=logging.WARNING)
        failed = {str(f.details.get("unit", "")): f.message for f in failures}
        for unit, message in failed.items():
            if self._reported.get(unit) != message:
                self.events.emit("services.unit-failed", message, level=logging.ERROR)
        self._reported = failed
        return changes

    async def on_role_change(self, old_role: Role, new_role: Role) -> list[Change]:
        """The failover hook: converge to ``new_role`` (stops first, in reverse order).

        Call it once the role source reports ``new_role`` (or the next reconcile undoes
        it). Every unit is tried, so a demotion stops all it can; failures are raised
        together at the end, each naming its unit.
        """
        if self._roles.current() is not new_role:
            raise Conflict(f"the role source still says {self._roles.current().value}, not "
                           f"{new_role.value}; update it before converging the services")
        state = self.last
        if state is None:
            raise Conflict("this node has no configuration yet: the services are not managed")
        facts = await self.facts(new_role)
        self.events.emit("services.role-change", f"{old_role.value} → {new_role.value}: "
                         "converging the units")
        async with self._lock:
            changes, failures = await self._converge(
                decide_units(self.catalogue, state.mode, facts), ())
        for change in changes:
            self.events.emit("services.role-change", f"{new_role.value}: {change}")
        if failures:
            raise SubsystemError(
                f"becoming {new_role.value}: {len(failures)} unit(s) did not converge",
                problems=[Problem(str(f.details.get("unit", "")), f.message) for f in failures],
            )
        return changes

    async def restart_all(self, progress: Progress | None = None) -> list[Step]:
        """"Notify processes and restart": stop, in reverse order, the unwanted units and the
        wanted ones that restart; then start the wanted ones in order (reload those whose
        catalogue entry says so). Every step is tried; the steps are returned."""
        state = self.last
        if state is None:
            raise Conflict("this node has no configuration yet: the services are not managed")
        facts = await self.facts()
        async with self._lock:
            decisions = decide_units(self.catalogue, state.mode, facts)
            states = {s.unit: s for s in await self.systemd.unit_states([d.unit for d in
                                                                          decisions])}
            plan: list[tuple[str, Entry]] = []
            for d in reversed(decisions):
                st = states[d.unit]
                if st.installed and not st.stopped and (
                    not d.wanted or d.entry.refresh is RefreshHow.RESTART
                ):
                    plan.append(("stop", d.entry))
            for d in decisions:
                if d.wanted:
                    reload = d.entry.refresh is RefreshHow.RELOAD and states[d.unit].running
                    plan.append(("reload" if reload else "start", d.entry))
            steps = [Step(i + 1, len(plan), a, e.unit, e.name) for i, (a, e) in enumerate(plan)]
            for step, (_, entry) in zip(steps, plan, strict=True):
                await self._run_step(step, entry, states[entry.unit], progress)
        return steps

    async def _run_step(
        self, step: Step, entry: Entry, state: UnitState, progress: Progress | None
    ) -> None:
        step.status = "running"
        if progress:
            await progress(replace(step))
        try:
            if step.action in ("stop", "reload"):
                job = self.systemd.stop if step.action == "stop" else self.systemd.reload
                await self._expect(entry, step.action, await job(entry.unit, entry.timeout))
            else:
                stale = "failed" if state.active_state == "failed" else "inactive"
                await self._start(entry, replace(state, active_state=stale))  # stopped above
            step.status, step.message = "done", ""
        except SubsystemError as exc:
            step.status, step.message = "failed", exc.message
        if progress:
            await progress(replace(step))


def _seen(state: UnitState) -> str:
    return f"{state.active_state}/{state.sub_state}"


# --- the periodic reconcile -----------------------------------------------------------------


async def watch(services: ServicesSubsystem, interval: float = WATCH_INTERVAL_S) -> None:
    """Reconcile every ``interval`` seconds until cancelled; never raises otherwise."""
    while True:
        await asyncio.sleep(interval)
        try:
            await services.watch_step()
        except Exception:
            log.exception("services: the periodic reconcile hit an unexpected error")
