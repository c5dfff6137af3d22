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
import subprocess
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from agent.errors import Problem, SubsystemError
from agent.ports.files import FileTree
from agent.services.catalogue import Role as ServiceRole
from agent.state.model import DesiredState
from agent.subsystems.base import Change, PlanItem, SubsystemPlan, item, joined
from ha.config import PairConfig
from ha.firewall import ALL_ZONE_NAMES, pair_zones, render_zone, zone_path
from ha.manager import HAManager
from ha.protocol import Role
from ha.replication.config import check_replication_paths
from ha.replication.database import DbSettings


class HACode(StrEnum):
    HA_START = "ha-start"
    HA_RECONFIGURE = "ha-reconfigure"
    HA_STOP = "ha-stop"
    HA_REPLICATION = "ha-replication"
    HA_FIREWALL = "ha-firewall"
    # warnings
    HA_NO_FAILOVER = "ha-no-failover"
    HA_NO_PAIR_KEY = "ha-no-pair-key"
    HA_DATABASE_RESTART = "ha-database-restart"


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
    replication = _replication_step(old, new) + _firewall_step(old, new)
    if before == after:
        # nothing the pair runs with changed (a DNS, NTP or search-domain edit)
        return SubsystemPlan(name, steps=replication)
    if after is None:
        return SubsystemPlan(
            name, steps=(item(C.HA_STOP, "stop fault tolerance (a master releases the node IP)"),
                         *_firewall_step(old, new)),
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
    warnings: tuple[PlanItem, ...] = _database_restart(old, new)
    step_list = (step, *replication)
    if not observed.pair_key_installed:
        warnings += (item(C.HA_NO_PAIR_KEY, "no pair key yet: run `voxnode ha pair-key "
                          "generate` (or `set`)"),)
    return SubsystemPlan(name, steps=step_list, warnings=warnings)


def _database_restart(old: DesiredState | None, new: DesiredState) -> tuple[PlanItem, ...]:
    """The database server restarts when the settings it needs for the pair change (its
    first pairing, a new management address)."""
    before = DbSettings.from_state(old) if old is not None else None
    after = DbSettings.from_state(new)
    if after is None or (before is not None and before.own == after.own):
        return ()
    return (item(C.HA_DATABASE_RESTART, "the database server restarts to take the pair's "
                 "replication settings: the PBX loses its database for a moment",
                 unit="mariadb.service"),)


def _firewall_step(old: DesiredState | None, new: DesiredState) -> tuple[PlanItem, ...]:
    """The pair's firewall zones: opened to the peer (and the arbiter) only, or closed."""
    before = pair_zones(old) if old is not None else ()
    after = pair_zones(new)
    if before == after:
        return ()
    if not after:
        return (item(C.HA_FIREWALL, "close the pair's ports in the firewall (remove "
                     f"{', '.join(z.name for z in before)})", zones=""),)
    text = "; ".join(
        f"from {z.source} only: " + ", ".join([*z.services, *(f"{p}/{proto}"
                                                             for p, proto in z.ports)])
        for z in after)
    return (item(C.HA_FIREWALL, f"open the pair's ports in the firewall ({text})",
                 zones=joined(z.name for z in after)),)


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
        changes = [Change("ha", text) for text in await self.manager.configure(new)]
        if self.files is not None:
            changes += await asyncio.to_thread(self._sync_firewall, new)
        return changes

    def _sync_firewall(self, new: DesiredState) -> list[Change]:
        """The zone files the pair needs written, the others removed, firewalld reloaded
        when something changed (blocking: in a worker thread)."""
        assert self.files is not None
        files = self.files
        wanted = {z.name: z for z in pair_zones(new)}
        changes = []
        for name, zone in wanted.items():
            if files.write_if_changed(zone_path(name), render_zone(zone), 0o644):
                changes.append(Change("write", zone_path(name), zone.purpose))
        for name in ALL_ZONE_NAMES:
            if name not in wanted and files.remove(zone_path(name)):
                changes.append(Change("remove", zone_path(name), "the pair's ports closed"))
        if changes:
            changes.append(reload_firewall(files))
        return changes


def reload_firewall(files: FileTree) -> Change:
    """``firewall-cmd --reload`` on a real node where firewalld runs; said, not done, on
    another root (a development machine's tests) or a node without firewalld."""
    tool = files.path("/usr/bin/firewall-cmd")
    if files.root != Path("/") or not tool.exists():
        return Change("skip", "firewalld reload", "no firewalld on this root: the zone files "
                      "take effect when firewalld starts")
    try:
        done = subprocess.run([str(tool), "--reload"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SubsystemError(f"firewalld did not reload: {exc}",
                             remedy="Check `systemctl status firewalld`.") from None
    if done.returncode == 252:  # FirewallD is not running: the files apply when it starts
        return Change("skip", "firewalld reload", "firewalld is not running")
    if done.returncode != 0:
        raise SubsystemError(f"firewalld refused the pair's zones: {done.stderr.strip()}",
                             remedy="Check `firewall-cmd --check-config`.")
    return Change("reload", "firewalld", "the pair's zones in force")


class HARoleSource:
    """The services catalogue's view of the pair role (standalone without failover)."""

    def __init__(self, manager: HAManager) -> None:
        self.manager = manager

    def current(self) -> ServiceRole:
        return ServiceRole(self.manager.service_role())


def service_role(role: Role) -> ServiceRole:
    return {Role.MASTER: ServiceRole.MASTER, Role.OFF: ServiceRole.OFF}.get(
        role, ServiceRole.SLAVE)
