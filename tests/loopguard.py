"""Catching a blocked event loop in every test tier.

The failover heartbeats share the agent's event loop, so no callback may block it: a
blocking write or a CPU-heavy step there is a false failover waiting for a slow disk.

- Unit tier: ``watch_loop`` puts the test's own loop in asyncio debug mode with
  ``slow_callback_duration = STALL_S`` and fails the test if asyncio reports a callback
  that took longer.
- Namespace tier: agents started by the tests get ``VOXNODE_LOOP_STALL_MS`` (the daemon
  then runs its loop the same way) and ``VOXNODE_STRICT_LOOP=1`` (a durable write on the
  loop raises); ``problems_in_log`` finds either in an agent's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator

STALL_S = 0.05
AGENT_ENV = {"VOXNODE_LOOP_STALL_MS": str(round(STALL_S * 1000)), "VOXNODE_STRICT_LOOP": "1"}
_SLOW = re.compile(r"Executing .* took (\d+\.\d+) seconds")


class SlowCallbacks(logging.Handler):
    """Collects asyncio's "Executing <handle> took N seconds" reports."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _SLOW.search(message):
            self.reports.append(message[:300])


@contextlib.asynccontextmanager
async def watch_loop() -> AsyncIterator[SlowCallbacks]:
    loop = asyncio.get_running_loop()
    handler = SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    was_debug, was_duration = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = STALL_S
    try:
        yield handler
    finally:
        loop.set_debug(was_debug)
        loop.slow_callback_duration = was_duration
        logger.removeHandler(handler)


def problems_in_log(text: str) -> list[str]:
    """Stalls and durable writes on the loop that an agent's log reports."""
    return [line[:300] for line in text.splitlines()
            if _SLOW.search(line) or "BlockingOnLoop" in line
            or "on the event loop" in line]


def export_agent_env() -> None:
    """Agents started from now on (subprocesses inherit the environment) watch their loop."""
    os.environ.update(AGENT_ENV)
