"""The netlink port: links, addresses and default routes of the agent's network namespace.

Owns the typed view of what the kernel holds (``Link``, ``Address``, ``DefaultRoute``), the
``NetlinkPort`` protocol the network subsystem talks to, the typed errors a kernel refusal
becomes (chosen by errno, never by message text) and the production adapter on pyroute2's
``AsyncIPRoute``. The in-memory fake lives in ``agent.ports.netlink_memory``.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.errors import SubsystemError
from agent.state.model import IPAddress, IPInterface

IFF_UP = 0x1
IFA_F_PERMANENT = 0x80  # set on static addresses; DHCP/SLAAC ones have a lifetime instead
_SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_DEFAULT_DST = {4: "0.0.0.0/0", 6: "::/0"}


@dataclass(frozen=True)
class Address:
    """One address on a link, as the kernel reports it."""

    interface: IPInterface  # address and prefix length
    label: str | None  # IPv4 only; IPv6 addresses carry no label
    scope: str  # "global", "link", "host"...
    permanent: bool  # False for addresses with a lifetime (DHCP, SLAAC)

    @property
    def family(self) -> int:
        return self.interface.version

    @property
    def is_vip(self) -> bool:
        """Shared address owned by the failover code (label ``<if>:vip``)."""
        return self.label is not None and self.label.endswith(":vip")


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    up: bool  # administratively up (IFF_UP), not carrier
    mtu: int
    addresses: tuple[Address, ...] = ()


@dataclass(frozen=True)
class DefaultRoute:
    family: int  # 4 or 6
    gateway: IPAddress | None
    ifname: str | None
    metric: int


class NetlinkPort(Protocol):
    """What the network subsystem needs from the kernel. Interfaces are named, not indexed."""

    async def links(self) -> list[Link]: ...

    async def addresses(self, ifname: str) -> tuple[Address, ...]:
        """The addresses on ``ifname``; () if there is no such interface."""
        ...

    async def set_link_up(self, ifname: str) -> None: ...

    async def set_mtu(self, ifname: str, mtu: int) -> None: ...

    async def add_address(self, ifname: str, address: IPInterface, label: str | None) -> None:
        """Add and wait until the kernel shows it; AddressExists if it is already there."""
        ...

    async def delete_address(self, ifname: str, address: IPInterface) -> None:
        """Delete and wait until it is gone; AddressMissing if it was not there."""
        ...

    async def default_routes(self, family: int) -> list[DefaultRoute]: ...

    async def replace_default_route(self, gateway: IPAddress) -> None:
        """Make the default route of the gateway's family go via it; wait until it shows."""
        ...

    async def delete_default_route(self, gateway: IPAddress) -> None:
        """Delete every default route via ``gateway``; RouteMissing if there was none."""
        ...


# --- typed refusals ---------------------------------------------------------------------


class NetlinkFailure(SubsystemError):
    """The kernel refused a request; ``errno`` says why (callers branch on the class)."""

    def __init__(self, message: str, *, errno_code: int, remedy: str | None = None) -> None:
        name = errno.errorcode.get(errno_code, str(errno_code))
        super().__init__(message, remedy=remedy, details={"errno": name})
        self.errno = errno_code


class InterfaceMissing(NetlinkFailure):
    def __init__(self, ifname: str, present: list[str]) -> None:
        super().__init__(
            f"interface {ifname} does not exist on this node "
            f"(present: {', '.join(sorted(present)) or 'none'})",
            errno_code=errno.ENODEV,
            remedy="Correct network.interfaces to name interfaces this node has.",
        )
        self.ifname = ifname


class AddressExists(NetlinkFailure):
    def __init__(self, ifname: str, address: IPInterface) -> None:
        super().__init__(f"address {address} is already on {ifname}", errno_code=errno.EEXIST)


class AddressMissing(NetlinkFailure):
    def __init__(self, ifname: str, address: IPInterface) -> None:
        super().__init__(f"address {address} is not on {ifname}", errno_code=errno.EADDRNOTAVAIL)


class GatewayUnreachable(NetlinkFailure):
    def __init__(self, gateway: IPAddress) -> None:
        super().__init__(
            f"cannot route via {gateway}: no interface that is up has an address in its subnet",
            errno_code=errno.ENETUNREACH,
            remedy="Give the interface facing the gateway an address in the gateway's subnet.",
        )


class RouteMissing(NetlinkFailure):
    def __init__(self, gateway: IPAddress) -> None:
        super().__init__(f"there is no default route via {gateway}", errno_code=errno.ESRCH)


class MtuRefused(NetlinkFailure):
    def __init__(self, ifname: str, mtu: int) -> None:
        super().__init__(
            f"{ifname} does not accept mtu {mtu} (outside what its driver supports)",
            errno_code=errno.EINVAL,
            remedy=f"Lower network.interfaces.{ifname}.mtu or remove it.",
        )


class NotConverged(SubsystemError):
    """The kernel accepted a request but did not show its result in time."""


def refusal(code: int, action: str) -> NetlinkFailure:
    """A refusal without a dedicated class: the sentence comes from errno, not the message."""
    if code == errno.EPERM:
        return NetlinkFailure(
            f"not allowed to {action}: the agent needs CAP_NET_ADMIN",
            errno_code=code,
            remedy="Run voxnode-agent as root (its systemd unit does).",
        )
    return NetlinkFailure(f"the kernel refused to {action}: {os.strerror(code)}", errno_code=code)


# --- production adapter -----------------------------------------------------------------


def _as_address(msg: Any) -> Address:
    # IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links
    text = msg.get("local") or msg.get("address")
    flags = msg.get("IFA_FLAGS")
    flags = int(flags if flags is not None else msg["flags"])
    return Address(
        interface=ipaddress.ip_interface(f"{text}/{msg['prefixlen']}"),
        label=msg.get("label"),
        scope=_SCOPES.get(int(msg["scope"]), str(msg["scope"])),
        permanent=bool(flags & IFA_F_PERMANENT),
    )


class PyRoute2Netlink:
    """``NetlinkPort`` on pyroute2's AsyncIPRoute, in the agent process's own namespace.

    One socket, opened on first use. Every request has a timeout; additions and deletions
    are verified by polling the kernel until it shows the result ("ensure and verify").
    """

    def __init__(self, timeout: float = 5.0, verify_timeout: float = 2.0) -> None:
        self._timeout = timeout
        self._verify_timeout = verify_timeout
        self._ipr: Any = None

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def _call(self, action: str, request: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run one request with a timeout; NetlinkError becomes a typed refusal by errno."""
        if self._ipr is None:
            self._ipr = AsyncIPRoute()
        try:
            async with asyncio.timeout(self._timeout):
                result = await request(self._ipr)
                if hasattr(result, "__aiter__"):  # dumps are lazy: drain them inside the timeout
                    result = [msg async for msg in result]
                return result
        except TimeoutError:
            raise NotConverged(
                f"the kernel did not answer within {self._timeout:g} s ({action})"
            ) from None
        except NetlinkError as exc:
            raise refusal(exc.code, action) from exc

    async def _index(self, ifname: str) -> int:
        # one ioctl in this network namespace, not a netlink link dump: a takeover and a
        # release each look an interface up on their way to the node IP
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            raise InterfaceMissing(ifname, [link.name for link in await self.links()]) from None

    async def _until(self, done: Callable[[], Awaitable[bool]], what: str) -> None:
        try:
            async with asyncio.timeout(self._verify_timeout):
                # netlink has no "tell me when" for one address: poll the kernel briefly
                while True:
                    if await done():
                        return
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise NotConverged(
                f"{what} was accepted but the kernel did not show it within "
                f"{self._verify_timeout:g} s"
            ) from None

    async def links(self) -> list[Link]:
        links = await self._call("list interfaces", lambda ipr: ipr.link("dump"))
        addrs = await self._call("list addresses", lambda ipr: ipr.addr("dump"))
        by_index: dict[int, list[Address]] = {}
        for msg in addrs:
            by_index.setdefault(int(msg["index"]), []).append(_as_address(msg))
        return [
            Link(
                name=str(msg.get("ifname")),
                index=int(msg["index"]),
                up=bool(int(msg["flags"]) & IFF_UP),
                mtu=int(msg.get("mtu") or 0),
                addresses=tuple(by_index.get(int(msg["index"]), ())),
            )
            for msg in links
        ]

    async def addresses(self, ifname: str) -> tuple[Address, ...]:
        # one address dump, no link dump: the failover daemon asks this every few seconds
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            return ()
        found = await self._call(f"list the addresses of {ifname}",
                                 lambda ipr: ipr.addr("dump"))
        return tuple(_as_address(msg) for msg in found if int(msg["index"]) == index)

    async def set_link_up(self, ifname: str) -> None:
        index = await self._index(ifname)
        await self._call(f"bring {ifname} up", lambda ipr: ipr.link("set", index=index, state="up"))

    async def set_mtu(self, ifname: str, mtu: int) -> None:
        index = await self._index(ifname)
        try:
            await self._call(f"set mtu {mtu} on {ifname}",
                             lambda ipr: ipr.link("set", index=index, mtu=mtu))
        except NetlinkFailure as exc:
            if exc.errno == errno.EINVAL:
                raise MtuRefused(ifname, mtu) from exc
            raise

    async def add_address(self, ifname: str, address: IPInterface, label: str | None) -> None:
        index = await self._index(ifname)
        request: dict[str, Any] = {"index": index, "address": str(address.ip),
                                   "prefixlen": address.network.prefixlen}
        if label is not None and address.version == 4:  # IPv6 has no address labels
            request["label"] = label
        try:
            await self._call(f"add {address} to {ifname}", lambda ipr: ipr.addr("add", **request))
        except NetlinkFailure as exc:
            if exc.errno == errno.EEXIST:
                raise AddressExists(ifname, address) from exc
            raise

        async def shown() -> bool:
            return any(a.interface == address for a in await self.addresses(ifname))

        await self._until(shown, f"address {address} on {ifname}")

    async def delete_address(self, ifname: str, address: IPInterface) -> None:
        index = await self._index(ifname)
        try:
            await self._call(
                f"remove {address} from {ifname}",
                lambda ipr: ipr.addr("del", index=index, address=str(address.ip),
                                     prefixlen=address.network.prefixlen),
            )
        except NetlinkFailure as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise AddressMissing(ifname, address) from exc
            raise

        async def gone() -> bool:
            return all(a.interface != address for a in await self.addresses(ifname))

        await self._until(gone, f"removal of {address} from {ifname}")

    async def default_routes(self, family: int) -> list[DefaultRoute]:
        names = {link.index: link.name for link in await self.links()}
        routes = await self._call(
            "list default routes",
            lambda ipr: ipr.get_default_routes(family=_FAMILIES[family]),
        )
        out = []
        for msg in routes:
            gateway = msg.get("gateway")
            oif = msg.get("oif")
            out.append(DefaultRoute(
                family=family,
                gateway=ipaddress.ip_address(gateway) if gateway else None,
                ifname=names.get(int(oif)) if oif is not None else None,
                metric=int(msg.get("priority") or 0),
            ))
        return out

    async def _via(self, gateway: IPAddress) -> list[DefaultRoute]:
        return [r for r in await self.default_routes(gateway.version) if r.gateway == gateway]

    async def replace_default_route(self, gateway: IPAddress) -> None:
        dst = _DEFAULT_DST[gateway.version]
        try:
            await self._call(f"set the default route via {gateway}",
                             lambda ipr: ipr.route("replace", dst=dst, gateway=str(gateway)))
        except NetlinkFailure as exc:
            if exc.errno == errno.ENETUNREACH:
                raise GatewayUnreachable(gateway) from exc
            raise

        async def shown() -> bool:
            return bool(await self._via(gateway))

        await self._until(shown, f"the default route via {gateway}")

    async def delete_default_route(self, gateway: IPAddress) -> None:
        routes = await self._via(gateway)
        if not routes:
            raise RouteMissing(gateway)
        dst = _DEFAULT_DST[gateway.version]
        for route in routes:

            def delete(ipr: Any, metric: int = route.metric) -> Awaitable[Any]:
                # the metric picks one route: without it the kernel deletes the first match
                request: Awaitable[Any] = ipr.route(
                    "del", dst=dst, gateway=str(gateway), priority=metric
                )
                return request

            try:
                await self._call(f"remove the default route via {gateway}", delete)
            except NetlinkFailure as exc:
                if exc.errno != errno.ESRCH:  # already gone (e.g. flushed with its address)
                    raise

        async def gone() -> bool:
            return not await self._via(gateway)

        await self._until(gone, f"removal of the default route via {gateway}")
