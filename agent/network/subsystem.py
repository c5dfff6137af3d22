"""The network subsystem: interfaces, addresses, default route, hostname, DNS and NTP files.

Owns the ``network`` section. ``apply`` sets the running kernel state through the netlink
port (add first, remove after, so a change of address never leaves the node without one)
and persists it in NetworkManager keyfiles, resolv.conf, chrony.conf and /etc/hostname.
It leaves alone what others own: shared addresses labelled ``<if>:vip`` (failover),
addresses with a lifetime (DHCP/SLAAC) and interfaces that are not configured. Its plan
(``agent.network.plan``) needs nothing from the machine; ``kernel_view`` is what `network
show` reports.
"""

from __future__ import annotations

import contextlib
from typing import Any

from agent.errors import Problem, SubsystemError
from agent.network.plan import plan_network
from agent.network.render import KEYFILE_DIR, KEYFILE_PREFIX, KEYFILE_SUFFIX, render_all
from agent.ports.files import FileTree, durable
from agent.ports.hostname import HostnamePort
from agent.ports.netlink import (
    Address,
    AddressExists,
    AddressMissing,
    InterfaceMissing,
    Link,
    NetlinkPort,
    RouteMissing,
)
from agent.state.model import DesiredState, InterfaceConfig, IPInterface, NetworkConfig
from agent.subsystems.base import Change, SubsystemPlan


def _removable(addr: Address, desired: list[IPInterface], previously: list[IPInterface]) -> bool:
    """May apply delete this address? Only static, global, not failover-owned, not desired.

    IPv6 addresses carry no label, so a failover-owned IPv6 address cannot be told from a
    stale one: remove only IPv6 addresses the previous configuration put there.
    """
    if not addr.permanent or addr.scope != "global" or addr.is_vip:
        return False
    if addr.interface in desired:
        return False
    return addr.family == 4 or addr.interface in previously


def _origin(addr: Address, desired: list[IPInterface]) -> str:
    if addr.is_vip:
        return "failover"
    if addr.interface in desired:
        return "configured"
    return "static" if addr.permanent else "dynamic"


class NetworkSubsystem:
    name = "network"
    owns: tuple[str, ...] = ("network",)

    def __init__(
        self, netlink: NetlinkPort, files: FileTree, hostname: HostnamePort | None
    ) -> None:
        self._netlink = netlink
        self._files = files
        self._hostname = hostname  # None when the agent must not rename the machine

    async def check(self, new: DesiredState) -> list[Problem]:
        # Interface existence is deliberately not checked here: it is an apply failure.
        return []

    async def observe(self, new: DesiredState) -> None:
        """The plan needs nothing from the machine: the documents say it all."""
        return None

    def plan(self, old: DesiredState | None, new: DesiredState, observed: None
             ) -> SubsystemPlan:
        return plan_network(old.network if old else None, new.network)

    async def apply(self, old: DesiredState | None, new: DesiredState) -> list[Change]:
        net = new.network
        previous = old.network if old else None
        links = {link.name: link for link in await self._netlink.links()}
        missing = [ifname for ifname in net.interfaces if ifname not in links]
        if len(missing) == 1:
            raise InterfaceMissing(missing[0], list(links))
        if missing:  # fail before touching anything
            raise SubsystemError(
                f"interfaces {', '.join(missing)} do not exist on this node "
                f"(present: {', '.join(sorted(links))})",
                remedy="Correct network.interfaces to name interfaces this node has.",
            )
        changes: list[Change] = []
        for ifname, iface in net.interfaces.items():
            changes += await self._converge_link(links[ifname], iface)
        changes += await self._remove_stale(previous, net)
        changes += await self._converge_routes(previous, net)
        changes += await self._converge_hostname(net)
        changes += await durable(self._write_files, net)
        return changes

    async def _converge_link(self, link: Link, iface: InterfaceConfig) -> list[Change]:
        ifname = link.name
        changes: list[Change] = []
        if iface.mtu is not None and link.mtu != iface.mtu:
            await self._netlink.set_mtu(ifname, iface.mtu)
            changes.append(Change("set", f"mtu of {ifname}", f"{link.mtu} → {iface.mtu}"))
        if not link.up:
            await self._netlink.set_link_up(ifname)
            changes.append(Change("up", f"link {ifname}"))
        present = {a.interface for a in link.addresses}
        # The kernel keys IPv6 addresses by address alone: the same address with another
        # prefix length must go before the desired one can be added.
        for addr in link.addresses:
            clash = any(addr.interface.ip == want.ip and addr.interface != want
                        for want in iface.addresses if want.version == 6)
            if clash and addr.permanent and not addr.is_vip:
                await self._netlink.delete_address(ifname, addr.interface)
                changes.append(Change("remove", f"address {addr.interface} on {ifname}",
                                      "replaced by another prefix length"))
        for want in iface.addresses:
            if want in present:
                continue
            try:
                await self._netlink.add_address(ifname, want, label=ifname)
            except AddressExists:
                continue  # appeared meanwhile: converged all the same
            changes.append(Change("add", f"address {want} on {ifname}"))
        return changes

    async def _remove_stale(self, old: NetworkConfig | None, net: NetworkConfig) -> list[Change]:
        """Remove static addresses no longer wanted; restore what the kernel dropped with them."""
        changes: list[Change] = []
        old_ifs = old.interfaces if old else {}
        for link in await self._netlink.links():
            if link.name in net.interfaces:
                desired = list(net.interfaces[link.name].addresses)
            elif link.name in old_ifs:
                desired = []  # de-configured: only what the old configuration put there goes
            else:
                continue
            previously = list(old_ifs[link.name].addresses) if link.name in old_ifs else []
            doomed = [a for a in link.addresses if _removable(a, desired, previously)]
            if link.name not in net.interfaces:
                doomed = [a for a in doomed if a.interface in previously]
            # The kernel lists a subnet's primary before its secondaries; deleting from the
            # end removes secondaries first, so fewer addresses get dropped along the way.
            for addr in reversed(doomed):
                # AddressMissing: the kernel dropped it with its primary; gone all the same
                with contextlib.suppress(AddressMissing):
                    await self._netlink.delete_address(link.name, addr.interface)
                changes.append(Change("remove", f"address {addr.interface} on {link.name}"))
            if doomed:
                changes += await self._restore_dropped(link, doomed)
        return changes

    async def _restore_dropped(self, before: Link, doomed: list[Address]) -> list[Change]:
        """With promote_secondaries off, deleting an IPv4 primary deletes every secondary of
        its subnet too — including a new desired address or the failover's :vip. Put back
        the static ones (a dynamic address re-added here would become static)."""
        after = next((link for link in await self._netlink.links() if link.name == before.name),
                     None)
        if after is None:
            return []
        now = {a.interface for a in after.addresses}
        gone = {a.interface for a in doomed}
        changes = []
        for addr in before.addresses:
            if addr.interface in now or addr.interface in gone or not addr.permanent:
                continue
            with contextlib.suppress(AddressExists):  # its owner re-added it meanwhile
                await self._netlink.add_address(before.name, addr.interface, addr.label)
            changes.append(Change("restore", f"address {addr.interface} on {before.name}",
                                  "the kernel dropped it with a removed primary address"))
        return changes

    async def _converge_routes(self, old: NetworkConfig | None, net: NetworkConfig) -> list[Change]:
        changes: list[Change] = []
        gateway = net.gateway
        if gateway is not None:
            routes = await self._netlink.default_routes(gateway.version)
            if not any(r.gateway == gateway for r in routes):
                await self._netlink.replace_default_route(gateway)
                was = f", was {routes[0].gateway}" if routes and routes[0].gateway else ""
                changes.append(Change("set", "default route", f"via {gateway}{was}"))
        old_gateway = old.gateway if old else None
        if old_gateway is not None and old_gateway != gateway:
            routes = await self._netlink.default_routes(old_gateway.version)
            if any(r.gateway == old_gateway for r in routes):
                try:
                    await self._netlink.delete_default_route(old_gateway)
                    changes.append(Change("remove", f"default route via {old_gateway}"))
                except RouteMissing:
                    pass  # flushed by the kernel with its address meanwhile
        return changes

    async def _converge_hostname(self, net: NetworkConfig) -> list[Change]:
        if self._hostname is None:
            return []
        current = await self._hostname.current()
        if current == net.hostname:
            return []
        await self._hostname.set(net.hostname)
        return [Change("set", "hostname", f"{current} → {net.hostname}")]

    def _write_files(self, net: NetworkConfig) -> list[Change]:
        rendered = render_all(net)
        changes = [
            Change("write", f.path)
            for f in rendered
            if self._files.write_if_changed(f.path, f.content, f.mode)
        ]
        wanted = {f.path for f in rendered}
        directory = self._files.path(KEYFILE_DIR)
        if directory.is_dir():
            for found in sorted(directory.glob(f"{KEYFILE_PREFIX}*{KEYFILE_SUFFIX}")):
                node_path = f"{KEYFILE_DIR}/{found.name}"
                if node_path not in wanted and self._files.remove(node_path):
                    changes.append(Change("delete", node_path, "interface no longer configured"))
        return changes

    async def kernel_view(self, state: DesiredState) -> dict[str, Any]:
        """What `network show` reports: the kernel's view of the configured interfaces and
        how it drifts from ``state``."""
        net = state.network
        links = {link.name: link for link in await self._netlink.links()}
        interfaces: dict[str, Any] = {}
        drift: list[str] = []
        for ifname, iface in net.interfaces.items():
            link = links.get(ifname)
            if link is None:
                interfaces[ifname] = {"state": "missing"}
                drift.append(f"{ifname}: interface does not exist on this node")
                continue
            desired = list(iface.addresses)
            shown = [a for a in link.addresses if a.scope == "global"]
            interfaces[ifname] = {
                "state": "up" if link.up else "down",
                "mtu": link.mtu,
                # one line per global address for tables; the full view is in "details"
                "addresses": [f"{a.interface} ({_origin(a, desired)})" for a in shown],
                "details": [
                    {"address": str(a.interface), "label": a.label, "scope": a.scope,
                     "permanent": a.permanent, "origin": _origin(a, desired)}
                    for a in link.addresses
                ],
            }
            drift += _link_drift(link, iface)
        routes = [r for family in (4, 6) for r in await self._netlink.default_routes(family)]
        if net.gateway is not None and not any(r.gateway == net.gateway for r in routes):
            drift.append(f"default route via {net.gateway} is missing")
        return {
            "interfaces": interfaces,
            "default_routes": [
                {"family": r.family, "gateway": str(r.gateway) if r.gateway else None,
                 "interface": r.ifname, "metric": r.metric}
                for r in routes
            ],
            "drift": drift,
        }


def _link_drift(link: Link, iface: InterfaceConfig) -> list[str]:
    drift = []
    if not link.up:
        drift.append(f"{link.name}: link is down")
    if iface.mtu is not None and link.mtu != iface.mtu:
        drift.append(f"{link.name}: mtu is {link.mtu}, configured {iface.mtu}")
    present = {a.interface for a in link.addresses}
    drift += [f"{link.name}: desired address {want} is missing"
              for want in iface.addresses if want not in present]
    drift += [f"{link.name}: unexpected address {a.interface}"
              for a in link.addresses
              if a.permanent and a.scope == "global" and not a.is_vip
              and a.interface not in iface.addresses]
    return drift
