"""The fixed-period callback the failover daemon sends heartbeats with (ha.timer)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math

import pytest

from ha.timer import Periodic


async def test_runs_at_once_then_every_period_until_cancelled() -> None:
    calls: list[float] = []
    enough = asyncio.Event()
    loop = asyncio.get_running_loop()

    def beat() -> None:
        calls.append(loop.time())
        if len(calls) == 4:
            enough.set()

    timer = Periodic(0.01, beat)
    await asyncio.sleep(0)
    assert len(calls) == 1  # the first call comes at once
    await asyncio.wait_for(enough.wait(), 5)
    timer.cancel()
    assert not timer.running
    count = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == count
    # on a grid: each call at or after its slot, never two in one slot (a late loop skips
    # the missed periods rather than bunching them)
    slots = [math.floor((c - calls[0]) / 0.01 + 1e-3) for c in calls]
    assert all(a < b for a, b in itertools.pairwise(slots)), (calls, slots)


async def test_a_failing_call_is_logged_and_the_next_period_comes(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    done = asyncio.Event()

    def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("network is down")
        done.set()

    with caplog.at_level(logging.ERROR, logger="voxnode.ha.timer"):
        timer = Periodic(0.01, flaky)
        await asyncio.wait_for(done.wait(), 5)
        timer.cancel()
    assert calls == 2
    assert "network is down" in caplog.text


async def test_cancelled_from_its_own_callback() -> None:
    calls = 0
    holder: list[Periodic] = []

    def once() -> None:
        nonlocal calls
        calls += 1
        holder[0].cancel()

    holder.append(Periodic(0.01, once))
    await asyncio.sleep(0.05)
    assert calls == 1


def test_the_period_must_be_positive() -> None:
    async def make() -> None:
        Periodic(0, lambda: None)
    with pytest.raises(ValueError, match="positive"):
        asyncio.run(make())


async def test_defer_moves_the_next_call_and_the_grid_follows() -> None:
    loop = asyncio.get_running_loop()
    calls: list[float] = []
    enough = asyncio.Event()

    def beat() -> None:
        calls.append(loop.time())
        if len(calls) == 3:
            enough.set()

    timer = Periodic(0.02, beat)
    await asyncio.sleep(0)
    assert len(calls) == 1
    # the owner did the work itself: the timer stays quiet for the deferral, then runs
    # every period from there
    deferred_at = loop.time()
    timer.defer(0.1)
    await asyncio.wait_for(enough.wait(), 5)
    timer.cancel()
    assert calls[1] - deferred_at >= 0.1 - 1e-3
    assert calls[2] - calls[1] >= 0.02 - 1e-3


async def test_defer_after_cancel_does_not_restart() -> None:
    calls: list[int] = []
    timer = Periodic(0.01, lambda: calls.append(1))
    await asyncio.sleep(0)
    timer.cancel()
    timer.defer(0.01)
    await asyncio.sleep(0.05)
    assert calls == [1] and not timer.running
