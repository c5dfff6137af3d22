"""The node IP(s) on this node: take, verify, announce, release.

The master adds each shared address with pyroute2 (IPv4 labelled ``<if>:vip`` so the
network subsystem leaves it alone), checks the kernel shows it, then announces it with
gratuitous ARP (IPv4) or an unsolicited Neighbour Advertisement (IPv6).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from agent.ports.netlink import AddressExists, AddressMissing, NetlinkPort
from agent.state.model import SharedIP
from ha.arp import ArpEndpoint
from ha.net import send_unsolicited_na

log = logging.getLogger("voxnode.ha.vip")

IFNAMSIZ = 15


def vip_label(ifname: str) -> str:
    """``eth0:vip`` (at most 15 characters: long interface names are shortened)."""
    return ifname[: IFNAMSIZ - 4] + ":vip"


class NodeIP:
    def __init__(self, netlink: NetlinkPort, shared: Sequence[SharedIP],
                 arp: dict[str, ArpEndpoint]) -> None:
        self.netlink = netlink
        self.shared = list(shared)
        self.arp = arp

    async def held(self) -> list[bool]:
        """For each shared address: does this node's kernel have it?"""
        on = {ifname: await self.netlink.addresses(ifname)
              for ifname in dict.fromkeys(s.interface for s in self.shared)}
        return [any(a.interface == s.address for a in on[s.interface]) for s in self.shared]

    async def take(self) -> list[str]:
        done = []
        for shared in self.shared:
            label = vip_label(shared.interface) if shared.address.version == 4 else None
            try:
                await self.netlink.add_address(shared.interface, shared.address, label)
                done.append(f"added {shared.address} on {shared.interface}")
            except AddressExists:
                pass
        return done

    def announce(self) -> None:
        for shared in self.shared:
            ip = shared.address.ip
            if isinstance(ip, IPv4Address):
                endpoint = self.arp.get(shared.interface)
                if endpoint is not None:
                    endpoint.announce(ip, count=1)
            elif isinstance(ip, IPv6Address):
                send_unsolicited_na(shared.interface, ip)

    async def release(self) -> list[str]:
        return await self.release_some(self.shared)

    async def release_some(self, shared_ips: Sequence[SharedIP]) -> list[str]:
        done = []
        for shared in shared_ips:
            try:
                await self.netlink.delete_address(shared.interface, shared.address)
                done.append(f"removed {shared.address} from {shared.interface}")
            except AddressMissing:
                pass
        return done


def keep_secondaries(interfaces: Sequence[str], proc: Path = Path("/proc/sys/net/ipv4/conf")
                     ) -> None:
    """Make the kernel promote a secondary address when the primary of its subnet goes.

    Without it, removing a node address (a network change) silently removes the node IP of
    the same subnet too. Per network namespace, so safe in tests.
    """
    for ifname in interfaces:
        path = proc / ifname / "promote_secondaries"
        try:
            if path.read_text().strip() != "1":
                path.write_text("1\n")
        except OSError as exc:
            log.warning("cannot set %s: %s", path, exc.strerror)
