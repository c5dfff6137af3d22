"""The services subsystem's plan: which units a change starts and stops, and why. Pure.

It works on what the subsystem observed just before (``ServicesObservation``: the facts
the decisions depend on, and the units' states). Units that would move are those whose
wanted state differs from what systemd shows; when the units could not be read, those
whose wanted state the document change flips; when not even the facts could be read, one
step says the catalogue will be followed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from agent.ports.systemd import UnitState
from agent.services.catalogue import Catalogue, Facts
from agent.services.catalogue import decide as decide_units
from agent.state.model import DesiredState
from agent.subsystems.base import SubsystemPlan, item


class ServicesCode(StrEnum):
    UNIT_START = "unit-start"
    UNIT_STOP = "unit-stop"
    UNITS_FOLLOW_CATALOGUE = "units-follow-catalogue"
    # warnings
    SERVICE_UNAVAILABLE = "service-unavailable"


C = ServicesCode


@dataclass(frozen=True)
class ServicesObservation:
    """What the plan needs from the node; None where it could not be read."""

    facts: Facts | None
    units: Mapping[str, UnitState] | None  # unit name → its state, every catalogue unit


def plan_services(catalogue: Catalogue, old: DesiredState | None, new: DesiredState,
                  observed: ServicesObservation) -> SubsystemPlan:
    name = "services"
    facts = observed.facts
    if facts is None:
        return SubsystemPlan(name, steps=(
            item(C.UNITS_FOLLOW_CATALOGUE, "start and stop units as the catalogue says"),))
    after = decide_units(catalogue, new.mode, facts)
    units = observed.units
    if units is not None:
        moving = [d for d in after if d.wanted != units[d.unit].running
                  and (d.wanted or units[d.unit].installed)]
    else:  # the units could not be read: describe what the document change decides
        before = decide_units(catalogue, old.mode, facts) if old else []
        was = {d.unit: d.wanted for d in before}
        moving = [d for d in after if was.get(d.unit, False) != d.wanted]
    steps = [item(C.UNIT_START if d.wanted else C.UNIT_STOP,
                  f"{'start' if d.wanted else 'stop'} {d.entry.name} ({d.unit}): {d.reason}",
                  name=d.entry.name, unit=d.unit, reason=d.reason)
             for d in moving]
    warnings = [item(C.SERVICE_UNAVAILABLE,
                     f"{d.entry.name} stops: {d.entry.description} is unavailable",
                     name=d.entry.name, unit=d.unit, description=d.entry.description)
                for d in moving if not d.wanted]
    return SubsystemPlan(name, steps=tuple(steps), warnings=tuple(warnings))
