"""The tunnel port: what the running MCS tunnel looks like from inside the node.

Owns ``TunnelView`` (the tun interface's addresses; OpenVPN's own state, remote and byte
counts from its management interface), the ``TunnelPort`` protocol, the production adapter
``LocalTunnel`` (``psutil`` for the interface, the management unix socket for the rest)
and the in-memory ``MemoryTunnel`` for unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import psutil  # type: ignore[import-untyped]  # no stubs pinned; two calls used

from agent.mcs import MCS_MANAGEMENT_SOCKET, MCS_TUN_DEV

MANAGEMENT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class TunnelView:
    interface: str
    addresses: list[str] = field(default_factory=list)  # IPv4/IPv6 on the tun interface
    state: str | None = None  # OpenVPN's state: CONNECTING, WAIT, AUTH, GET_CONFIG, CONNECTED…
    since: float | None = None  # when OpenVPN entered that state (epoch seconds)
    remote: str | None = None  # the MCS address it talks to, host:port
    bytes_in: int | None = None
    bytes_out: int | None = None
    management: str = ""  # why OpenVPN's own view is missing, if it is

    @property
    def connected(self) -> bool:
        return self.state == "CONNECTED" and bool(self.addresses)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "connected": self.connected}


class TunnelPort(Protocol):
    async def observe(self) -> TunnelView: ...


class LocalTunnel:
    """The real tunnel of this node (run inside the node: the agent's own namespace)."""

    def __init__(self, interface: str = MCS_TUN_DEV,
                 management: str = MCS_MANAGEMENT_SOCKET) -> None:
        self.interface = interface
        self.management = management

    async def observe(self) -> TunnelView:
        addresses = [
            a.address for a in psutil.net_if_addrs().get(self.interface, [])
            if a.family in (socket.AF_INET, socket.AF_INET6)
        ]
        try:
            async with asyncio.timeout(MANAGEMENT_TIMEOUT_S):
                state_lines, stats = await self._query()
        except (OSError, TimeoutError, ValueError) as exc:
            why = ("OpenVPN is not running (no management socket)"
                   if isinstance(exc, FileNotFoundError | ConnectionRefusedError)
                   else f"OpenVPN's management interface did not answer: {exc or 'timeout'}")
            return TunnelView(self.interface, addresses, management=why)
        return view_from_management(self.interface, addresses, state_lines, stats)

    async def _query(self) -> tuple[list[str], str]:
        reader, writer = await asyncio.open_unix_connection(self.management)
        try:
            await reader.readline()  # >INFO:OpenVPN Management Interface Version 5 …
            writer.write(b"state\n")
            await writer.drain()
            lines: list[str] = []
            while (line := (await reader.readline()).decode(errors="replace").strip()) != "END":
                if not line and reader.at_eof():
                    raise ValueError("the connection closed during 'state'")
                if not line.startswith(">"):  # real-time notifications interleave
                    lines.append(line)
            writer.write(b"load-stats\n")
            await writer.drain()
            stats = ""
            while not stats.startswith(("SUCCESS:", "ERROR:")):
                raw = await reader.readline()
                if not raw:
                    raise ValueError("the connection closed during 'load-stats'")
                stats = raw.decode(errors="replace").strip()
            return lines, stats
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def view_from_management(interface: str, addresses: list[str], state_lines: list[str],
                         stats: str) -> TunnelView:
    """Pure: OpenVPN's answers to ``state`` and ``load-stats`` as a ``TunnelView``.

    ``state`` answers ``time,STATE,description,local_ip,remote_ip,remote_port,…``;
    ``load-stats`` answers ``SUCCESS: nclients=0,bytesin=N,bytesout=N``.
    """
    state = since = remote = None
    if state_lines:
        fields = state_lines[-1].split(",")
        if len(fields) > 1 and fields[0].isdigit():
            since, state = float(fields[0]), fields[1]
            if len(fields) > 5 and fields[4]:
                remote = f"{fields[4]}:{fields[5]}"
    counters: dict[str, int] = {}
    if stats.startswith("SUCCESS:"):
        for item in stats.removeprefix("SUCCESS:").strip().split(","):
            key, _, value = item.partition("=")
            if value.isdigit():
                counters[key] = int(value)
    return TunnelView(interface, addresses, state, since, remote,
                      counters.get("bytesin"), counters.get("bytesout"))


class MemoryTunnel:
    """A tunnel for unit tests: set ``view`` to what the node should show."""

    def __init__(self, view: TunnelView | None = None) -> None:
        self.view = view or TunnelView(MCS_TUN_DEV, management="OpenVPN is not running "
                                                                "(no management socket)")

    def connect(self, address: str = "10.78.0.2", remote: str = "10.77.0.200:1194") -> None:
        self.view = TunnelView(MCS_TUN_DEV, [address], "CONNECTED", 1_700_000_000.0, remote,
                               1000, 2000)

    def disconnect(self) -> None:
        self.view = MemoryTunnel().view

    async def observe(self) -> TunnelView:
        return self.view
