"""The hostname port: the kernel's host name (UTS namespace) of the node.

The daemon passes no hostname port when its root directory is not ``/``: tests and the lab
run the agent inside namespaces and must not rename the machine they run on.
"""

from __future__ import annotations

import errno
import socket
from typing import Protocol

from agent.errors import SubsystemError


class HostnamePort(Protocol):
    async def current(self) -> str: ...

    async def set(self, name: str) -> None: ...


class KernelHostname:
    """sethostname(2)/gethostname(2); the persistent name is /etc/hostname (rendered)."""

    async def current(self) -> str:
        return socket.gethostname()

    async def set(self, name: str) -> None:
        try:
            socket.sethostname(name)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise SubsystemError(
                    f"not allowed to set the hostname to {name}: the agent needs CAP_SYS_ADMIN",
                    remedy="Run voxnode-agent as root (its systemd unit does).",
                ) from exc
            raise SubsystemError(
                f"could not set the hostname to {name}: {exc.strerror}"
            ) from exc


class MemoryHostname:
    """A fake host name for unit tests."""

    def __init__(self, name: str = "localhost") -> None:
        self.name = name

    async def current(self) -> str:
        return self.name

    async def set(self, name: str) -> None:
        self.name = name
