"""The ``ha`` section of the desired state: runs the pair's failover runtime (``ha/``).

Applying a revision (re)configures ``HAManager``: it starts the runtime when ha.enabled,
reconfigures it in place (role and node IP kept) when the pair's own settings change
(``ha.config.PairConfig``: a DNS, NTP or search-domain edit changes nothing), and stops it
(releasing the node IP if this node was master) when fault tolerance is switched off.
Its plan depends on the documents and on one fact it observes: whether a pair key is
installed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

from agent.errors import Problem
from agent.ports.files import FileTree
from agent.services.catalogue import Role as ServiceRole
from agent.state.model import DesiredState
from agent.subsystems.base import Change, PlanItem, SubsystemPlan, item, joined
from ha.config import PairConfig
from ha.manager import HAManager
from ha.protocol import Role
from ha.replication.config import check_replication_paths
from ha.replication.database import DbSettings


class HACode(StrEnum):
    HA_START = "ha-start"
    HA_RECONFIGURE = "ha-reconfigure"
    HA_STOP = "ha-stop"
    HA_REPLICATION = "ha-replication"
    # warnings
    HA_NO_FAILOVER = "ha-no-failover"
    HA_NO_PAIR_KEY = "ha-no-pair-key"


C = HACode


@dataclass(frozen=True)
class HAObservation:
    pair_key_installed: bool


def plan_ha(old: DesiredState | None, new: DesiredState, observed: HAObservation
            ) -> SubsystemPlan:
    """Pure: what the pair runtime will do, from the pair's own settings of both documents."""
    name = "ha"
    before = PairConfig.from_state(old) if old is not None and old.ha.enabled else None
    after = PairConfig.from_state(new) if new.ha.enabled else None
    replication = _replication_step(old, new)
    if before == after:
        # nothing the pair runs with changed (a DNS, NTP or search-domain edit)
        return SubsystemPlan(name, steps=replication)
    if after is None:
        return SubsystemPlan(
            name, steps=(item(C.HA_STOP, "stop fault tolerance (a master releases the node IP)"),),
            warnings=(item(C.HA_NO_FAILOVER, "this node stops taking part in the pair: no "
                           "failover any more"),),
        )
    ips = ", ".join(f"{s.address} on {s.interface}" for s in after.shared_ips) or "none"
    node_ips = joined(f"{s.interface}={s.address}" for s in after.shared_ips)
    step: PlanItem
    if before is None:
        step = item(C.HA_START, f"run fault tolerance with peer {after.peer_ip} "
                    f"({after.profile.value} profile; node IP {ips})",
                    peer=str(after.peer_ip), profile=after.profile.value, node_ips=node_ips)
    else:
        changed = [field for field in ("mgmt_ip", "peer_ip", "port", "profile", "shared_ips",
                                       "witnesses", "cloud", "arbiter")
                   if getattr(before, field) != getattr(after, field)]
        step = item(C.HA_RECONFIGURE, f"reconfigure fault tolerance in place, keeping the role "
                    f"and the node IP (changed: {', '.join(changed)}; node IP {ips})",
                    changed=joined(changed), node_ips=node_ips)
    warnings: tuple[PlanItem, ...] = ()
    step_list = (step, *replication)
    if not observed.pair_key_installed:
        warnings += (item(C.HA_NO_PAIR_KEY, "no pair key yet: run `voxnode ha pair-key "
                          "generate` (or `set`)"),)
    return SubsystemPlan(name, steps=step_list, warnings=warnings)


def _replication_step(old: DesiredState | None, new: DesiredState) -> tuple[PlanItem, ...]:
    """What a change of ``ha.replication`` does while the pair runs (or will)."""
    if not new.ha.enabled:
        return ()
    before = old.ha.replication if old is not None and old.ha.enabled else None
    after = new.ha.replication
    if before == after:
        return ()
    database = DbSettings.from_state(new)
    db_text = (f"the database on {database.socket} follows the roles (replica of "
               f"{database.peer} while slave)" if database is not None
               else "no database replication")
    paths = ", ".join(after.paths) or "none"
    return (item(C.HA_REPLICATION, f"replication: {db_text}; file paths: {paths} "
                 f"({after.bandwidth_kb} KiB/s); lag limit {after.max_lag_s:g} s",
                 database=database.socket if database is not None else "",
                 paths=joined(after.paths), bandwidth_kb=after.bandwidth_kb,
                 max_lag_s=after.max_lag_s),)


class HASubsystem:
    name = "ha"
    owns: tuple[str, ...] = ("ha",)

    def __init__(self, manager: HAManager, files: FileTree | None = None) -> None:
        self.manager = manager
        self.files = files

    async def check(self, new: DesiredState) -> list[Problem]:
        """The replicated paths exist on this node (looked at off the event loop)."""
        if self.files is None or not new.ha.replication.paths:
            return []
        return await asyncio.to_thread(check_replication_paths, new, self.files)

    async def observe(self, new: DesiredState) -> HAObservation:
        # the manager read the key file at start and follows every install since
        return HAObservation(pair_key_installed=self.manager.key_installed)

    def plan(self, old: DesiredState | None, new: DesiredState, observed: HAObservation
             ) -> SubsystemPlan:
        return plan_ha(old, new, observed)

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
