"""The failover daemon persists its role and epoch (fsync) without stopping its loop: the
heartbeats share that loop, and a busy disk must not silence them past the dead interval."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent.events import EventLog
from agent.ports.netlink_memory import MemoryNetlink
from agent.state.model import HAProfile
from ha.machine import TIMINGS
from ha.manager import HAManager
from ha.protocol import Kind, Role
from ha.store import HAStore


class QuietRuntime:
    """What a transition to off needs from the runtime: no node IP, a peer to tell."""

    def __init__(self, store: HAStore) -> None:
        self.node_ip = None
        self.timing = TIMINGS[HAProfile.STANDARD]
        self.store = store
        self.told: list[tuple[Kind, Role]] = []  # what was sent, and the role on disk then

    def send(self, kind: Kind = Kind.HEARTBEAT) -> None:
        self.told.append((kind, self.store.load().role))

    def wake(self) -> None:
        pass


async def test_the_role_is_written_off_the_loop(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    writing: list[float] = []
    save = HAStore.save

    def slow_save(self: HAStore, persisted: Any) -> None:
        writing.append(time.monotonic())
        time.sleep(0.3)  # a disk busy with something else
        save(self, persisted)
        writing.append(time.monotonic())

    monkeypatch.setattr(HAStore, "save", slow_save)
    manager = HAManager(tmp_path / "ha", MemoryNetlink(), EventLog())
    runtime = QuietRuntime(HAStore(tmp_path / "ha"))
    manager.runtime = runtime  # type: ignore[assignment]
    manager.role = Role.SLAVE
    beats: list[float] = []

    async def heartbeat() -> None:
        while True:
            beats.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(heartbeat())
    try:
        await manager.transition(Role.OFF, "set to off by the operator")
    finally:
        task.cancel()
    start, end = writing
    assert len([b for b in beats if start < b < end]) >= 3, "the loop stood still meanwhile"
    assert runtime.told == [(Kind.HEARTBEAT, Role.OFF)]  # the peer is told once it is on disk
    assert manager.role is Role.OFF
