"""The ``ha`` section of the desired state: runs the pair's failover runtime (``ha/``).

Applying a revision (re)configures ``HAManager``: it starts the runtime when ha.enabled,
restarts it when the pair's settings or the network change, and stops it (releasing the
node IP if this node was master) when fault tolerance is switched off.
"""

from __future__ import annotations

from agent.errors import Problem
from agent.services.catalogue import Role as ServiceRole
from agent.state.model import DesiredState
from agent.subsystems.base import Change, SubsystemPlan
from ha.manager import HAManager
from ha.protocol import Role


class HASubsystem:
    name = "ha"
    owns: tuple[str, ...] = ("ha",)

    def __init__(self, manager: HAManager) -> None:
        self.manager = manager

    async def check(self, new: DesiredState) -> list[Problem]:
        return []

    def plan(self, old: DesiredState | None, new: DesiredState) -> SubsystemPlan:
        before = old.ha if old else None
        if before == new.ha and (old is None or old.network == new.network or not new.ha.enabled):
            return SubsystemPlan(self.name)
        if not new.ha.enabled:
            if before is None or not before.enabled:
                return SubsystemPlan(self.name)
            return SubsystemPlan(
                self.name, steps=("stop fault tolerance (a master releases the node IP)",),
                warnings=("this node stops taking part in the pair: no failover any more",),
            )
        ips = ", ".join(f"{s.address} on {s.interface}" for s in new.ha.shared_ips) or "none"
        steps = (f"run fault tolerance with peer {new.ha.peer} ({new.ha.profile.value} "
                 f"profile; node IP {ips})",)
        warnings: tuple[str, ...] = ()
        if before is not None and before.enabled:
            warnings = ("the failover runtime restarts: a master keeps serving only if the "
                        "peer does not take over meanwhile",)
        if self.manager.store.key() is None:
            warnings += ("no pair key yet: run `voxnode ha pair-key generate` (or `set`)",)
        return SubsystemPlan(self.name, steps=steps, warnings=warnings)

    async def apply(self, old: DesiredState | None, new: DesiredState) -> list[Change]:
        return [Change("ha", text) for text in await self.manager.configure(new)]


class HARoleSource:
    """The services catalogue's view of the pair role (standalone without failover)."""

    def __init__(self, manager: HAManager) -> None:
        self.manager = manager

    def current(self) -> ServiceRole:
        return ServiceRole(self.manager.service_role())


def service_role(role: Role) -> ServiceRole:
    return {Role.MASTER: ServiceRole.MASTER, Role.OFF: ServiceRole.OFF}.get(
        role, ServiceRole.SLAVE)
