"""Did the event loop keep running while a blocking call (a slow disk) was in progress?"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any


class SlowCall:
    """Wraps ``fn`` so each call first sleeps ``seconds`` (a disk busy with something
    else), remembering when the calls started and ended."""

    def __init__(self, fn: Callable[..., Any], seconds: float = 0.3) -> None:
        self.fn = fn
        self.seconds = seconds
        self.spans: list[tuple[float, float]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        time.sleep(self.seconds)
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.spans.append((start, time.monotonic()))


@contextlib.asynccontextmanager
async def loop_beats(period: float = 0.01) -> AsyncIterator[list[float]]:
    """The times a coroutine on the loop got to run, every ``period``, while inside."""
    beats: list[float] = []

    async def beat() -> None:
        while True:
            beats.append(time.monotonic())
            await asyncio.sleep(period)

    task = asyncio.create_task(beat())
    try:
        yield beats
    finally:
        task.cancel()


def ran_during(beats: list[float], span: tuple[float, float]) -> int:
    start, end = span
    return len([b for b in beats if start < b < end])
