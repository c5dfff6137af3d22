"""The ``ha`` section of the desired state: runs the pair's failover runtime (``ha/``).

Applying a revision (re)configures ``HAManager``: it starts the runtime when ha.enabled,
reconfigures it in place (role and node IP kept) when the pair's own settings change
(``ha.config.PairConfig``: a DNS, NTP or search-domain edit changes nothing), and stops it
(releasing the node IP if this node was master) when fault tolerance is switched off.
"""

from __future__ import annotations

from agent.errors import Problem
from agent.services.catalogue import Role as ServiceRole
from agent.state.model import DesiredState
from agent.subsystems.base import Change, SubsystemPlan
from ha.config import PairConfig
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
        before = PairConfig.from_state(old) if old is not None and old.ha.enabled else None
        after = PairConfig.from_state(new) if new.ha.enabled else None
        if before == after:
            # nothing the pair runs with changed (a DNS, NTP or search-domain edit)
            return SubsystemPlan(self.name)
        if after is None:
            return SubsystemPlan(
                self.name, steps=("stop fault tolerance (a master releases the node IP)",),
                warnings=("this node stops taking part in the pair: no failover any more",),
            )
        ips = ", ".join(f"{s.address} on {s.interface}" for s in after.shared_ips) or "none"
        if before is None:
            steps = (f"run fault tolerance with peer {after.peer_ip} ({after.profile.value} "
                     f"profile; node IP {ips})",)
        else:
            changed = [name for name in ("mgmt_ip", "peer_ip", "port", "profile", "shared_ips",
                                         "witnesses", "cloud", "arbiter")
                       if getattr(before, name) != getattr(after, name)]
            steps = (f"reconfigure fault tolerance in place, keeping the role and the node IP "
                     f"(changed: {', '.join(changed)}; node IP {ips})",)
        warnings: tuple[str, ...] = ()
        if not self.manager.key_installed:
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
