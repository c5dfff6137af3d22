"""A fixed-period callback on the asyncio loop, for the daemon's steady work (heartbeats,
witness probes): one timer handle per period, no task and no future, so an idle pair costs
as few wake-ups as the protocol needs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("voxnode.ha.timer")


class Periodic:
    """Calls ``fn`` now and then every ``interval`` seconds on a fixed grid (a late loop
    skips the missed periods rather than bunching them) until ``cancel()``. An exception
    from ``fn`` is logged and the next period comes anyway."""

    def __init__(self, interval: float, fn: Callable[[], None]) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.interval = interval
        self._fn = fn
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.time()
        self._handle: asyncio.Handle | None = self._loop.call_soon(self._run)

    def _run(self) -> None:
        try:
            self._fn()
        except Exception:
            log.exception("periodic %s failed", getattr(self._fn, "__qualname__", self._fn))
        finally:
            if self._handle is not None:  # not cancelled by fn
                now = self._loop.time()
                self._next += self.interval
                if self._next <= now:
                    self._next = now + self.interval
                self._handle = self._loop.call_at(self._next, self._run)

    def defer(self, delay: float) -> None:
        """The next call ``delay`` seconds from now, then every ``interval`` from there (an
        owner that just did the periodic work itself, in a wake-up it had anyway)."""
        if self._handle is None:
            return
        self._handle.cancel()
        self._next = self._loop.time() + delay
        self._handle = self._loop.call_at(self._next, self._run)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    @property
    def running(self) -> bool:
        return self._handle is not None
