"""An in-memory systemd for unit tests: units, their states, jobs and unit files.

It follows systemd's rules where the services subsystem depends on them: a unit that is
not installed reports ``not-found`` and refuses jobs with ``NoSuchUnit``; a masked unit
refuses start with ``UnitMasked``; a failed start leaves the unit ``failed`` with a
``Result``; enabling an enabled unit changes nothing. Failures are injected per unit and
job (``fail``), D-Bus refusals with ``refuse``, a hung job with ``hang``. Every job is
recorded in ``jobs`` as ``(verb, unit)`` so tests can check the order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.ports.systemd import (
    DEFAULT_JOB_TIMEOUT_S,
    JOB_DONE,
    UnitFileChange,
    UnitState,
    job_timeout,
    refusal,
)

WANTS = "/etc/systemd/system/multi-user.target.wants"


@dataclass
class FakeUnit:
    name: str
    active: bool = False
    enabled: bool = False
    masked: bool = False
    failed_result: str = ""  # the unit's Result after a failure ("" = success)
    results: dict[str, str] = field(default_factory=dict)  # verb -> job result to answer
    refusals: dict[str, tuple[str, str]] = field(default_factory=dict)  # verb -> D-Bus error
    hung: set[str] = field(default_factory=set)  # verbs whose jobs never finish


class MemorySystemd:
    def __init__(self) -> None:
        self.units: dict[str, FakeUnit] = {}
        self.jobs: list[tuple[str, str]] = []
        self.reloads = 0  # daemon reloads after unit file changes

    # --- setting the scene ------------------------------------------------------------------

    def install(self, *names: str, active: bool = False, enabled: bool = False) -> None:
        for name in names:
            self.units[name] = FakeUnit(name, active=active, enabled=enabled)

    def fail(self, unit: str, verb: str, result: str = "failed") -> None:
        """Make the next and later ``verb`` jobs of ``unit`` end with ``result``."""
        self.units[unit].results[verb] = result

    def refuse(self, unit: str, verb: str, error_name: str, text: str) -> None:
        """Make systemd answer ``verb`` on ``unit`` with a D-Bus error."""
        self.units[unit].refusals[verb] = (error_name, text)

    def hang(self, unit: str, verb: str) -> None:
        self.units[unit].hung.add(verb)

    def heal(self, unit: str) -> None:
        fake = self.units[unit]
        fake.results.clear()
        fake.refusals.clear()
        fake.hung.clear()

    def stop_by_hand(self, unit: str) -> None:
        """What `systemctl stop` from a shell does: no job the agent asked for."""
        self.units[unit].active = False

    def crash(self, unit: str, result: str = "signal") -> None:
        fake = self.units[unit]
        fake.active = False
        fake.failed_result = result

    # --- SystemdPort --------------------------------------------------------------------------

    async def unit_state(self, unit: str) -> UnitState:
        fake = self.units.get(unit)
        if fake is None:
            return UnitState(unit, "not-found", "inactive", "dead", "", "")
        if fake.masked:
            return UnitState(unit, "masked", "inactive", "dead", "success", "masked")
        if fake.active:
            active, sub = "active", "running"
        elif fake.failed_result:
            active, sub = "failed", "failed"
        else:
            active, sub = "inactive", "dead"
        return UnitState(
            unit, "loaded", active, sub, fake.failed_result or "success",
            "enabled" if fake.enabled else "disabled",
        )

    async def unit_states(self, units: Sequence[str]) -> list[UnitState]:
        return [await self.unit_state(u) for u in units]

    def _fake(self, unit: str, verb: str) -> FakeUnit:
        fake = self.units.get(unit)
        if fake is None:
            raise refusal(unit, verb, "org.freedesktop.systemd1.NoSuchUnit",
                          f"Unit {unit} not found.")
        if verb in fake.refusals:
            raise refusal(unit, verb, *fake.refusals[verb])
        return fake

    async def _job(self, verb: str, unit: str, within: float) -> str:
        fake = self._fake(unit, verb)
        if fake.masked and verb in ("start", "restart", "reload"):
            raise refusal(unit, verb, "org.freedesktop.systemd1.UnitMasked",
                          f"Unit {unit} is masked.")
        self.jobs.append((verb, unit))
        if verb in fake.hung:
            try:
                async with asyncio.timeout(within):
                    await asyncio.Event().wait()
            except TimeoutError:
                raise job_timeout(unit, verb, within) from None
        result = fake.results.get(verb, JOB_DONE)
        if verb == "reload" and not fake.active:
            return "invalid"  # systemd refuses to reload a unit that is not running
        if result != JOB_DONE:
            if verb in ("start", "restart"):  # a failed reload or stop leaves it running
                fake.active = False
                fake.failed_result = "exit-code"
            return result
        fake.active = verb != "stop"
        fake.failed_result = ""
        return JOB_DONE

    async def start(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str:
        return await self._job("start", unit, within)

    async def stop(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str:
        return await self._job("stop", unit, within)

    async def restart(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str:
        return await self._job("restart", unit, within)

    async def reload(self, unit: str, within: float = DEFAULT_JOB_TIMEOUT_S) -> str:
        return await self._job("reload", unit, within)

    async def reset_failed(self, unit: str) -> None:
        fake = self._fake(unit, "reset-failed")
        self.jobs.append(("reset-failed", unit))
        fake.failed_result = ""

    def _link(self, fake: FakeUnit, kind: str) -> list[UnitFileChange]:
        self.jobs.append((kind, fake.name))
        self.reloads += 1
        return [UnitFileChange("symlink" if kind in ("enable", "mask") else "unlink",
                               f"{WANTS}/{fake.name}", f"/lib/systemd/system/{fake.name}")]

    async def enable(self, unit: str) -> list[UnitFileChange]:
        fake = self._fake(unit, "enable")
        if fake.enabled:
            return []
        fake.enabled = True
        return self._link(fake, "enable")

    async def disable(self, unit: str) -> list[UnitFileChange]:
        fake = self._fake(unit, "disable")
        if not fake.enabled:
            return []
        fake.enabled = False
        return self._link(fake, "disable")

    async def mask(self, unit: str) -> list[UnitFileChange]:
        fake = self._fake(unit, "mask")
        if fake.masked:
            return []
        fake.masked = True
        return self._link(fake, "mask")

    async def unmask(self, unit: str) -> list[UnitFileChange]:
        fake = self._fake(unit, "unmask")
        if not fake.masked:
            return []
        fake.masked = False
        return self._link(fake, "unmask")
