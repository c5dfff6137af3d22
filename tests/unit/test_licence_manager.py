"""The licensing service without a server: its port reads off the loop, and when its
periodic task wakes up.

A licence signed here with a test key, installed in a temporary state directory; the
clock and the task's sleep are injected, so no time passes and no server is asked (a
removed licence is not checked).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from agent.licence.document import Licence, Module, new_private_key, public_key_pem, sign_licence
from agent.licence.fingerprint import node_fingerprint
from agent.licence.manager import LicenceManager
from agent.licence.state import GRACE_S, LicenceState, Record
from agent.ports.files import FileTree, durable
from agent.services.catalogue import load_catalogue
from agent.state.document import validate_document

T0 = 1_800_000_000.0
KEY_FILE = "/etc/voxnode/vendor.pub"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def removed_licence(tmp_path: Path, *, removed_at: float, now: float,
                          valid_until: int | None = None) -> tuple[LicenceManager, Clock]:
    """A node whose licence was removed at ``removed_at``, seen at ``now``."""
    root = tmp_path / "root"
    (root / "etc/voxnode").mkdir(parents=True)
    (root / "etc/machine-id").write_text("1" * 32 + "\n")
    key = new_private_key()
    (root / KEY_FILE.lstrip("/")).write_bytes(public_key_pem(key.public_key()))
    state = validate_document({
        "schema_version": 1, "license": {"public_key_file": KEY_FILE},
        "network": {"hostname": "pbx1", "interfaces": {"eth0": {"dhcp": True}}}})
    clock = Clock(now)
    manager = LicenceManager(tmp_path / "state", FileTree(root), lambda: state,
                             fingerprint=lambda: node_fingerprint(root),
                             catalogue=load_catalogue("appliance"), clock=clock)
    licence = Licence("VX-1", "ACME", "o@acme.example", (Module("PBX"),), int(T0), valid_until,
                      1, manager.fingerprint().value)
    await durable(manager.store.write_licence, sign_licence(licence, key))
    await durable(manager.store.write_record,
                  Record(removed_at=removed_at, ever_licensed=True, max_seen=now))
    return manager, clock


async def first_sleep(manager: LicenceManager) -> float:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await manager.run(sleep=sleep)
    return slept[0]


async def test_in_grace_the_task_wakes_when_the_grace_period_ends(tmp_path: Path) -> None:
    grace_until = T0 + GRACE_S
    manager, clock = await removed_licence(tmp_path, removed_at=T0, now=grace_until - 100)
    assert manager.status()[0].state is LicenceState.GRACE
    assert await first_sleep(manager) == 100
    clock.now = grace_until
    assert manager.status()[0].state is LicenceState.UNLICENSED


async def test_in_grace_a_licence_expiring_first_wakes_the_task_at_its_expiry(
        tmp_path: Path) -> None:
    manager, _ = await removed_licence(tmp_path, removed_at=T0, now=T0 + 10 * 86400,
                                       valid_until=int(T0 + 10 * 86400 + 30))
    assert manager.status()[0].state is LicenceState.GRACE
    assert await first_sleep(manager) == 30


async def test_far_from_any_change_the_task_sleeps_an_hour_at_most(tmp_path: Path) -> None:
    manager, _ = await removed_licence(tmp_path, removed_at=T0, now=T0 + 60)
    assert await first_sleep(manager) == 3600


async def test_the_port_reads_off_the_loop(tmp_path: Path) -> None:
    """current() reads and verifies the licence in a worker thread: a read that takes
    0.3 s (a slow disk) leaves the loop free the whole time."""
    manager, _ = await removed_licence(tmp_path, removed_at=T0, now=T0 + 60)
    read = manager.store.read_record

    def slow_read() -> Record:
        time.sleep(0.3)
        return read()

    manager.store.read_record = slow_read  # type: ignore[method-assign]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    view = await manager.current()
    ticking.cancel()
    assert view.active and view.modules == {"PBX"}
    assert ticks >= 15, ticks


async def test_a_licence_that_cannot_be_read_in_time_is_a_problem_not_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The working-mode check bounds its wait for the licence: a read that does not end
    in time is a problem for the ``mode`` path, and the check answers."""
    from agent.mode import subsystem as mode_subsystem

    manager, _ = await removed_licence(tmp_path, removed_at=T0, now=T0 + 60)
    release = threading.Event()
    read = manager.store.read_record

    def stuck_read() -> Record:
        release.wait(5)
        return read()

    manager.store.read_record = stuck_read  # type: ignore[method-assign]
    monkeypatch.setattr(mode_subsystem, "LICENCE_TIMEOUT_S", 0.1)
    state = validate_document({
        "schema_version": 1, "mode": "pure-cloud",
        "network": {"hostname": "pbx1", "domain": "example.com", "public_ip": "203.0.113.7",
                    "interfaces": {"eth0": {"dhcp": True}}}})
    check = mode_subsystem.ModeSubsystem(FileTree(tmp_path / "root"), manager)
    try:
        problems = await asyncio.wait_for(check.check(state), 2)
    finally:
        release.set()
    assert [p.path for p in problems] == ["mode"], problems
    assert "could not be read within 0.1 s" in problems[0].message
