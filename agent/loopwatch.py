"""A watch on the event loop: report every callback that holds the loop too long.

The failover heartbeats share the agent's event loop, so a callback that blocks it (a
slow write, a CPU-heavy step, a garbage collection of a large heap) is a missed heartbeat.
``install(threshold)`` wraps the loop's callback runner (every ``Handle`` and
``TimerHandle``, tasks included) and logs ``event loop stalled: …`` for each callback that
held the loop longer than ``threshold`` seconds. Time a callback spent waiting for a CPU
(another process ran) is not its own: a callback counts as a stall when it held the loop
past the threshold *and* used at least half of it on the CPU, or when it held it five
times the threshold whatever it did (a blocking call). Enabled by
``VOXNODE_LOOP_STALL_MS`` (the namespace tests set it); off otherwise (it costs two clock
readings per callback).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("voxnode.loop")
STALL_MARK = "event loop stalled"

_original: Callable[[asyncio.Handle], None] | None = None


def stalled(wall: float, cpu: float, threshold: float) -> bool:
    """The rule of the module docstring."""
    return wall > threshold and (cpu >= threshold / 2 or wall > 5 * threshold)


def install(threshold: float, report: Callable[[str], None] | None = None) -> None:
    """Watch every callback of every loop in this process (until ``uninstall``)."""
    global _original
    uninstall()
    original = asyncio.Handle._run
    _original = original
    say = report or (lambda text: log.warning("%s", text))

    def _run(self: asyncio.Handle) -> None:
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        try:
            original(self)
        finally:
            wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
            if stalled(wall, cpu, threshold):
                say(f"{STALL_MARK}: {_describe(self)} held it {wall * 1000:.0f} ms "
                    f"({cpu * 1000:.0f} ms on the CPU)")

    setattr(asyncio.Handle, "_run", _run)  # noqa: B010 (every loop's callback runner)


def uninstall() -> None:
    global _original
    if _original is not None:
        setattr(asyncio.Handle, "_run", _original)  # noqa: B010 (a method put back)
        _original = None


def _describe(handle: asyncio.Handle) -> str:
    callback: Any = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        frame = getattr(coro, "cr_frame", None)
        where = (f" at {frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None
                 else "")
        return f"task {owner.get_name()} ({getattr(coro, '__qualname__', coro)}{where})"
    return repr(handle)[:200]
