"""``MemoryNetlink``: an in-memory kernel for unit tests of anything using ``NetlinkPort``.

It keeps the kernel's rules that matter to the network subsystem and raises the same typed
refusals the production adapter raises for the same errno: unknown interface (ENODEV),
duplicate address (EEXIST; IPv4 keys by address and prefix, IPv6 by address alone), missing
address (EADDRNOTAVAIL), gateway outside every subnet of an up link (ENETUNREACH), missing
route (ESRCH). Like a kernel with ``promote_secondaries=0`` (the default in a new network
namespace), deleting an IPv4 primary address also deletes the secondaries of its subnet,
and routes whose gateway is no longer on-link disappear.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field

from agent.ports.netlink import (
    Address,
    AddressExists,
    AddressMissing,
    DefaultRoute,
    GatewayUnreachable,
    InterfaceMissing,
    Link,
    MtuRefused,
    RouteMissing,
    refusal,
)
from agent.state.model import IPAddress, IPInterface

_MIN_MTU = 68


@dataclass
class _Link:
    name: str
    index: int
    up: bool
    mtu: int
    max_mtu: int
    addresses: list[Address] = field(default_factory=list)  # kernel order: primary first


def _same_key(a: IPInterface, b: IPInterface) -> bool:
    # The kernel refuses a second IPv6 address with the same IP whatever its prefix length.
    if a.version == 6:
        return a.ip == b.ip
    return a == b


class MemoryNetlink:
    """A fake kernel: ``lo`` exists from the start; tests add links and foreign addresses."""

    def __init__(self, *, promote_secondaries: bool = False) -> None:
        self.promote_secondaries = promote_secondaries
        self._links: dict[str, _Link] = {}
        self._routes: list[DefaultRoute] = []
        self.add_link("lo", up=True, mtu=65536)
        self.put_address("lo", "127.0.0.1/8", scope="host")
        self.put_address("lo", "::1/128", scope="host")

    # --- set-up: what the installer, DHCP or the failover code put there ------------------

    def add_link(self, name: str, *, up: bool = False, mtu: int = 1500,
                 max_mtu: int = 9216) -> None:
        self._links[name] = _Link(name, len(self._links) + 1, up, mtu, max_mtu)

    def put_address(self, ifname: str, cidr: str, *, label: str | None = None,
                    permanent: bool = True, scope: str = "global") -> None:
        iface = ipaddress.ip_interface(cidr)
        if label is None and iface.version == 4:
            label = ifname
        self._link(ifname).addresses.append(Address(iface, label, scope, permanent))

    def put_route(self, gateway: str, *, metric: int | None = None) -> None:
        gw = ipaddress.ip_address(gateway)
        self._routes.append(DefaultRoute(gw.version, gw, self._on_link(gw),
                                         metric if metric is not None else _metric(gw)))

    # --- NetlinkPort ----------------------------------------------------------------------

    async def links(self) -> list[Link]:
        return [
            Link(link.name, link.index, link.up, link.mtu, tuple(link.addresses))
            for link in sorted(self._links.values(), key=lambda link: link.index)
        ]

    async def addresses(self, ifname: str) -> tuple[Address, ...]:
        link = self._links.get(ifname)
        return tuple(link.addresses) if link is not None else ()

    async def set_link_up(self, ifname: str) -> None:
        link = self._link(ifname)
        link.up = True
        # the kernel gives every up link an IPv6 link-local address
        local = ipaddress.ip_interface(f"fe80::{link.index:x}/64")
        if not any(a.interface == local for a in link.addresses):
            link.addresses.append(Address(local, None, "link", True))

    async def set_mtu(self, ifname: str, mtu: int) -> None:
        link = self._link(ifname)
        if not _MIN_MTU <= mtu <= link.max_mtu:
            raise MtuRefused(ifname, mtu)
        link.mtu = mtu

    async def add_address(self, ifname: str, address: IPInterface, label: str | None) -> None:
        link = self._link(ifname)
        if any(_same_key(a.interface, address) for a in link.addresses):
            raise AddressExists(ifname, address)
        if address.version == 6:
            label = None
        elif label is None:
            label = ifname
        elif not label.startswith(ifname):  # the kernel's rule for IPv4 labels
            raise refusal(errno.EINVAL, f"add {address} to {ifname} with label {label}")
        scope = "link" if address.ip.is_link_local else "global"
        link.addresses.append(Address(address, label, scope, True))

    async def delete_address(self, ifname: str, address: IPInterface) -> None:
        link = self._link(ifname)
        target = next((a for a in link.addresses if a.interface == address), None)
        if target is None:
            raise AddressMissing(ifname, address)
        dropped = [target]
        if address.version == 4 and not self.promote_secondaries and self._is_primary(
            link, target
        ):
            dropped += [
                a for a in link.addresses
                if a is not target and a.interface.network == address.network
            ]
        link.addresses = [a for a in link.addresses if all(a is not d for d in dropped)]
        # routes whose gateway left every subnet go with the address, as in the kernel
        self._routes = [r for r in self._routes if r.gateway and self._on_link(r.gateway)]

    async def default_routes(self, family: int) -> list[DefaultRoute]:
        return sorted((r for r in self._routes if r.family == family), key=lambda r: r.metric)

    async def replace_default_route(self, gateway: IPAddress) -> None:
        ifname = self._on_link(gateway)
        if ifname is None:
            raise GatewayUnreachable(gateway)
        metric = _metric(gateway)
        self._routes = [
            r for r in self._routes if not (r.family == gateway.version and r.metric == metric)
        ]
        self._routes.append(DefaultRoute(gateway.version, gateway, ifname, metric))

    async def delete_default_route(self, gateway: IPAddress) -> None:
        kept = [r for r in self._routes if r.gateway != gateway]
        if len(kept) == len(self._routes):
            raise RouteMissing(gateway)
        self._routes = kept

    # --- kernel rules ---------------------------------------------------------------------

    def _link(self, ifname: str) -> _Link:
        link = self._links.get(ifname)
        if link is None:
            raise InterfaceMissing(ifname, list(self._links))
        return link

    def _on_link(self, gateway: IPAddress) -> str | None:
        for link in self._links.values():
            if link.up and any(gateway in a.interface.network for a in link.addresses):
                return link.name
        return None

    @staticmethod
    def _is_primary(link: _Link, target: Address) -> bool:
        first = next(
            a for a in link.addresses
            if a.interface.version == 4 and a.interface.network == target.interface.network
        )
        return first is target


def _metric(gateway: IPAddress) -> int:
    # what the kernel gives a route added without a metric
    return 0 if gateway.version == 4 else 1024

