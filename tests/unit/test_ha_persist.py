"""The failover daemon persists its role and epoch (fsync) without stopping its loop: the
heartbeats share that loop, and a busy disk must not silence them past the dead interval."""

from __future__ import annotations

import asyncio
import errno
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


class PromotableRuntime(QuietRuntime):
    """What a promotion needs: a node IP that records being taken, a peer with an epoch."""

    def __init__(self, store: HAStore, peer_epoch: int) -> None:
        super().__init__(store)
        self.taken = 0
        self.cfg = SimpleNamespace(timing=TIMINGS[HAProfile.STANDARD],
                                   shared_ips=["10.0.0.10/24"])
        self.peer = SimpleNamespace(view=SimpleNamespace(epoch=peer_epoch, released_at=None))
        runtime = self

        class NodeIP:
            async def take(self) -> list[str]:
                runtime.taken += 1
                return ["added 10.0.0.10/24 on eth0"]

            async def held(self) -> list[bool]:
                return [runtime.taken > 0]

            async def release(self) -> list[str]:
                runtime.taken = 0
                return []

            def announce(self) -> None:
                pass

        self.node_ip = NodeIP()

    def take_release(self) -> None:
        pass


async def test_the_next_epoch_is_written_ahead_so_a_full_disk_does_not_stop_a_takeover(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = HAManager(tmp_path / "ha", MemoryNetlink(), EventLog())
    runtime = PromotableRuntime(HAStore(tmp_path / "ha"), peer_epoch=3)
    manager.runtime = runtime  # type: ignore[assignment]
    manager.role = Role.SLAVE
    manager._reserve_ahead(runtime)  # type: ignore[arg-type]
    for _ in range(100):
        if manager._on_disk.reserved == 4:
            break
        await asyncio.sleep(0.01)
    assert manager.store.load().reserved == 4  # on disk, ahead of any promotion

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manager.store, "save", full)
    await manager.transition(Role.MASTER, "the master is unreachable", bump=True)
    assert manager.role is Role.MASTER and manager.persisted.epoch == 4 and runtime.taken
    # the peer took over meanwhile with a higher epoch: the next one cannot be written
    # ahead, and a takeover that needs it takes nothing
    await manager.transition(Role.SLAVE, "the peer took over")
    runtime.peer.view.epoch = 7
    manager._reserve_ahead(runtime)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    await manager.transition(Role.MASTER, "the master is unreachable", bump=True)
    assert manager.role is Role.SLAVE and runtime.taken == 0
    assert manager.promote_held is not None and manager.promote_held.code == "state-unsaved"
