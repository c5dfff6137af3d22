"""Proof that a plan is pure: no file, kernel or socket I/O, and no use of the ports.

``forbid_io()`` makes the calls every file or socket access goes through raise while it is
active (``open``, ``os.stat`` and its kin — which ``pathlib`` uses —, directory listings,
sockets, processes). ``Untouchable`` stands for a port or manager a plan must not use: any
attribute read raises.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any


class PlanDidIO(AssertionError):
    """A plan touched the machine."""


def _refuse(what: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> Any:
        raise PlanDidIO(f"the plan called {what}{args[:1]!r}: plans are pure, do the I/O in "
                        "observe()")
    return refuse


_GUARDED: tuple[tuple[object, str], ...] = (
    (builtins, "open"), (io, "open"), (io, "open_code"),
    (os, "open"), (os, "stat"), (os, "lstat"), (os, "scandir"), (os, "listdir"),
    (os, "access"), (os, "readlink"), (os, "walk"),
    (socket, "socket"), (socket, "create_connection"),
    (subprocess, "Popen"),
)


@contextlib.contextmanager
def forbid_io() -> Iterator[None]:
    saved = [(owner, name, getattr(owner, name)) for owner, name in _GUARDED]
    try:
        for owner, name, _ in saved:
            setattr(owner, name, _refuse(f"{getattr(owner, '__name__', owner)}.{name}"))
        yield
    finally:
        for owner, name, real in saved:
            setattr(owner, name, real)


class Untouchable:
    """A port (netlink, files, systemd, licence, the failover manager) a plan must not use."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, attr: str) -> Any:
        raise PlanDidIO(f"the plan used the {self._what} ({attr}): plans get what they need "
                        "from observe()")
