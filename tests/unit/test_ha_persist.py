"""The failover daemon persists its role and epoch (fsync) without stopping its loop: the
heartbeats share that loop, and a busy disk must not silence them past the dead interval."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.events import EventLog
from agent.ports.netlink_memory import MemoryNetlink
from agent.state.model import HAProfile
from ha.machine import TIMINGS
from ha.manager import HAManager
from ha.protocol import Kind, Role
from ha.store import HAStore
from tests.unit.loopwatch import SlowCall, loop_beats, ran_during


class QuietRuntime:
    """What a transition to off needs from the runtime: no node IP, a peer to tell."""

    def __init__(self, store: HAStore) -> None:
        self.node_ip = None
        self.cfg = SimpleNamespace(timing=TIMINGS[HAProfile.STANDARD])
        self.store = store
        self.told: list[tuple[Kind, Role]] = []  # what was sent, and the role on disk then

    def send(self, kind: Kind = Kind.HEARTBEAT) -> None:
        self.told.append((kind, self.store.load().role))

    def announce_now(self) -> None:
        self.send()


async def test_the_role_is_written_off_the_loop(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    manager = HAManager(tmp_path / "ha", MemoryNetlink(), EventLog())
    slow = SlowCall(manager.store.save)
    monkeypatch.setattr(manager.store, "save", slow)
    runtime = QuietRuntime(HAStore(tmp_path / "ha"))
    manager.runtime = runtime  # type: ignore[assignment]
    manager.role = Role.SLAVE
    async with loop_beats() as beats:
        await manager.transition(Role.OFF, "set to off by the operator")
    [span] = slow.spans
    assert ran_during(beats, span) >= 3, "the loop stood still meanwhile"
    assert runtime.told == [(Kind.HEARTBEAT, Role.OFF)]  # the peer is told once it is on disk
    assert manager.role is Role.OFF


class OrderedNodeIP:
    def __init__(self, order: list[str]) -> None:
        self.order = order

    async def release(self) -> list[str]:
        self.order.append("node IP released")
        return ["removed 10.0.0.10/24 from eth0"]


@pytest.mark.parametrize(("fault", "expected"), [
    (True, ["node IP released", "units stopped"]),  # isolated: the peer may take over now
    (False, ["units stopped", "node IP released"]),  # the operator's: the peer waits
])
async def test_a_demotion_on_a_fault_drops_the_node_ip_first(
        tmp_path: Path, fault: bool, expected: list[str]) -> None:
    manager = HAManager(tmp_path / "ha", MemoryNetlink(), EventLog())
    order: list[str] = []
    runtime = QuietRuntime(HAStore(tmp_path / "ha"))
    runtime.node_ip = OrderedNodeIP(order)  # type: ignore[assignment]
    manager.runtime = runtime  # type: ignore[assignment]
    manager.role, manager.holds_vip = Role.MASTER, True

    async def units(old: Role, new: Role) -> None:
        order.append("units stopped")

    manager.hooks.append(units)
    await manager._transition(Role.SLAVE, "isolated", fault=fault)
    assert order == expected
    assert manager.role is Role.SLAVE and not manager.holds_vip
