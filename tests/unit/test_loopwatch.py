"""The loop watch: a callback that holds the loop is reported; waiting for a CPU is not."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent import loopwatch
from agent.ports.files import BlockingOnLoop, atomic_write, durable


def test_the_rule() -> None:
    assert loopwatch.stalled(0.06, 0.05, 0.05)  # busy on the CPU
    assert not loopwatch.stalled(0.06, 0.001, 0.05)  # descheduled: another process ran
    assert loopwatch.stalled(0.30, 0.0, 0.05)  # a blocking call, however idle
    assert not loopwatch.stalled(0.04, 0.04, 0.05)


async def test_a_busy_callback_is_reported_with_its_task() -> None:
    reports: list[str] = []
    loopwatch.install(0.05, reports.append)
    try:
        async def busy() -> None:
            end = time.thread_time() + 0.08
            while time.thread_time() < end:
                pass

        await asyncio.create_task(busy(), name="the-busy-one")
        await asyncio.sleep(0.1)  # asleep: not a stall
    finally:
        loopwatch.uninstall()
    assert len(reports) == 1, reports
    assert "the-busy-one" in reports[0] and loopwatch.STALL_MARK in reports[0]


async def test_a_blocking_sleep_is_reported() -> None:
    reports: list[str] = []
    loopwatch.install(0.02, reports.append)
    try:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.call_soon(lambda: (time.sleep(0.15), done.set()))
        await done.wait()
    finally:
        loopwatch.uninstall()
    assert len(reports) == 1 and "held it" in reports[0]


async def test_a_durable_write_on_the_loop_is_refused_and_off_it_works(tmp_path: object
                                                                       ) -> None:
    from pathlib import Path
    target = Path(str(tmp_path)) / "f"
    with pytest.raises(BlockingOnLoop, match="on the event loop"):
        atomic_write(target, b"x")
    await durable(atomic_write, target, b"x")
    assert target.read_bytes() == b"x"
