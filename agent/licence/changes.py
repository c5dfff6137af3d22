"""What a new licence changes: modules, the units that start or stop, and reductions.

Pure functions. ``module_changes`` lists the modules whose state or limit differs;
``unit_changes`` asks the service catalogue which units start or stop (so the operator is
told whether applying interrupts service); ``reduction_problems`` finds counted modules
whose new limit is below the assignments in use, minus those the operator releases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from agent.errors import Problem
from agent.licence.document import Licence
from agent.ports.licence import LicenceView
from agent.services.catalogue import Catalogue, Facts, decide
from agent.state.model import WorkingMode


@dataclass(frozen=True)
class ModuleChange:
    name: str
    before: str  # "absent", "enabled", "enabled (limit 10)", "disabled"
    after: str

    def to_dict(self) -> dict[str, str]:
        return {"module": self.name, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class UnitChange:
    name: str
    unit: str
    action: str  # start, stop

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "unit": self.unit, "action": self.action}


def _describe(licence: Licence | None, name: str) -> str:
    module = licence.module(name) if licence else None
    if module is None:
        return "absent"
    if not module.enabled:
        return "disabled"
    return f"enabled (limit {module.limit})" if module.limit is not None else "enabled"


def module_changes(old: Licence | None, new: Licence) -> list[ModuleChange]:
    names = {m.name for m in new.modules} | ({m.name for m in old.modules} if old else set())
    out = []
    for name in sorted(names):
        before, after = _describe(old, name), _describe(new, name)
        if before != after:
            out.append(ModuleChange(name, before, after))
    return out


def unit_changes(
    catalogue: Catalogue, mode: WorkingMode, facts: Facts, before: frozenset[str],
    after: frozenset[str],
) -> list[UnitChange]:
    """Units whose wanted state differs between two module sets (in start order)."""
    def wanted(modules: frozenset[str]) -> dict[str, bool]:
        view = LicenceView(bool(modules), modules, "licence under review")
        return {d.unit: d.wanted for d in decide(catalogue, mode, replace(facts, licence=view))}

    was, will = wanted(before), wanted(after)
    out = []
    for entry in catalogue.in_start_order():
        if was[entry.unit] != will[entry.unit]:
            action = "start" if will[entry.unit] else "stop"
            out.append(UnitChange(entry.name, entry.unit, action))
    return out


def allowed(licence: Licence | None, module: str) -> int | None:
    """How many may hold ``module`` under ``licence``: None is unlimited, 0 none."""
    found = licence.module(module) if licence else None
    if found is None or not found.enabled:
        return 0
    return found.limit


def reduction_problems(
    new: Licence, assignments: Mapping[str, Iterable[str]], release: Iterable[str],
) -> list[Problem]:
    """Counted modules left over their new limit once ``release`` is dropped."""
    dropped = set(release)
    problems = []
    for module, holders in sorted(assignments.items()):
        limit = allowed(new, module)
        keep = [h for h in holders if h not in dropped]
        if limit is None or len(keep) <= limit:
            continue
        excess = len(keep) - limit
        problems.append(Problem(
            module, f"the new licence allows {limit}, {len(keep)} are assigned "
            f"({', '.join(keep)}): release at least {excess}"))
    return problems
