"""Catching a blocked event loop in every test tier.

The failover heartbeats share the agent's event loop, so no callback may block it: a
blocking write or a CPU-heavy step there is a false failover waiting for a slow disk.

- Unit tier: ``watch_loop`` puts the test's own loop in asyncio debug mode (which also
  catches calls from the wrong thread and coroutines never awaited) and installs
  ``agent.loopwatch`` with ``STALL_S``; the test fails if a callback held the loop longer.
- Namespace tier: agents started by the tests get ``VOXNODE_LOOP_STALL_MS`` (the daemon
  then runs the same watch) and ``VOXNODE_STRICT_LOOP=1`` (a durable write on the loop
  raises); ``lab.pair.voxnode.problems_in_log`` finds either in an agent's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from agent import loopwatch

STALL_S = 0.05
AGENT_ENV = {"VOXNODE_LOOP_STALL_MS": str(round(STALL_S * 1000)), "VOXNODE_STRICT_LOOP": "1"}
@contextlib.asynccontextmanager
async def watch_loop() -> AsyncIterator[list[str]]:
    """While inside: the stalls of the running loop (``agent.loopwatch``), as sentences."""
    loop = asyncio.get_running_loop()
    reports: list[str] = []
    was_debug = loop.get_debug()
    loop.set_debug(True)
    loop.slow_callback_duration = 3600.0  # asyncio's own report counts waiting for a CPU
    loopwatch.install(STALL_S, reports.append)
    try:
        yield reports
    finally:
        loopwatch.uninstall()
        loop.set_debug(was_debug)


def export_agent_env() -> None:
    """Agents started from now on (subprocesses inherit the environment) watch their loop."""
    os.environ.update(AGENT_ENV)
