"""The change pipeline with in-memory subsystems: rollback, acknowledgement, confirmation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.change_options import ChangeOptions
from agent.engine import Engine
from agent.errors import ApplyFailed, ConfirmationRequired, Conflict, InvalidInput, Problem
from agent.events import EventLog
from agent.state.document import validate_document
from agent.state.model import DesiredState
from agent.state.store import Pending, Store
from agent.subsystems.base import Change, OwnershipConflict, SubsystemPlan, item
from tests.unit.loopwatch import SlowCall, loop_beats, ran_during


def state(hostname: str, mode: str = "standard") -> DesiredState:
    return validate_document({
        "schema_version": 1,
        "network": {"hostname": hostname, "domain": "pbx.example.com",
                    "public_ip": "203.0.113.10",
                    "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}}},
        "mode": mode,
    })


class Machine:
    """What the fake subsystems 'configure': a dict standing for the node."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}


class HostnameSubsystem:
    """Keeps machine['hostname'] equal to the document; fails for a chosen host name."""

    name = "hostname"
    owns = ("network",)

    def __init__(self, machine: Machine, fail_for: str | None = None) -> None:
        self.machine = machine
        self.fail_for = fail_for

    async def check(self, new: DesiredState) -> list[Problem]:
        if new.network.hostname == "forbidden":
            return [Problem("network.hostname", "not on this node")]
        return []

    async def observe(self, new: DesiredState) -> str | None:
        return self.machine.values.get("hostname")

    def plan(self, old: DesiredState | None, new: DesiredState, observed: str | None
             ) -> SubsystemPlan:
        before = old.network.hostname if old else None
        if before == new.network.hostname:
            return SubsystemPlan(self.name)
        text = f"hostname {before} → {new.network.hostname} (the machine has {observed})"
        return SubsystemPlan(self.name, steps=(item("hostname-change", text),))

    async def apply(self, old: DesiredState | None, new: DesiredState) -> list[Change]:
        if self.machine.values.get("hostname") == new.network.hostname:
            return []
        self.machine.values["hostname"] = new.network.hostname
        return [Change("set", "hostname", new.network.hostname)]


class ModeLike:
    """Second subsystem: records the mode, fails when the hostname is fail_for."""

    name = "mode"
    owns = ("mode",)

    def __init__(self, machine: Machine, fail_for: str | None = None) -> None:
        self.machine = machine
        self.fail_for = fail_for

    async def check(self, new: DesiredState) -> list[Problem]:
        return []

    async def observe(self, new: DesiredState) -> None:
        return None

    def plan(self, old: DesiredState | None, new: DesiredState, observed: None
             ) -> SubsystemPlan:
        if old is not None and old.mode.value == "standard" and new.mode.value == "pure-cloud":
            return SubsystemPlan(self.name, acknowledge=(
                item("mcs-client-lost", "the MCS client config is deleted", paths="/etc/mcs"),))
        return SubsystemPlan(self.name)

    async def apply(self, old: DesiredState | None, new: DesiredState) -> list[Change]:
        if new.network.hostname == self.fail_for:
            raise RuntimeError("disk full")
        if self.machine.values.get("mode") == new.mode.value:
            return []
        self.machine.values["mode"] = new.mode.value
        return [Change("set", "mode", new.mode.value)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def machine() -> Machine:
    return Machine()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "state")
    s.open()
    return s


def make_engine(store: Store, machine: Machine, fail_for: str | None = None,
                clock: Clock | None = None) -> Engine:
    return Engine(store, [HostnameSubsystem(machine), ModeLike(machine, fail_for)], EventLog(),
                  clock=clock or Clock())


async def test_apply_commits_and_reapply_is_a_no_op(store: Store, machine: Machine) -> None:
    engine = make_engine(store, machine)
    out = await engine.apply(state("pbx1"))
    assert out.revision is not None and out.revision.revision == 1
    assert machine.values == {"hostname": "pbx1", "mode": "standard"}
    again = await engine.apply(state("pbx1"))
    assert again.revision is None
    assert all(not c for c in again.changes.values())
    assert store.head() == 1


async def test_dry_run_changes_nothing(store: Store, machine: Machine) -> None:
    engine = make_engine(store, machine)
    await engine.apply(state("pbx1"))
    out = await engine.apply(state("pbx2"), options=ChangeOptions(dry_run=True))
    assert [s.text for s in out.plan.subsystems[0].steps] == [
        "hostname pbx1 → pbx2 (the machine has pbx1)"]
    assert [f.path for f in out.plan.fields] == ["network.hostname"]
    assert machine.values["hostname"] == "pbx1"
    assert store.head() == 1


async def test_failed_apply_restores_the_previous_revision(store: Store, machine: Machine) -> None:
    engine = make_engine(store, machine, fail_for="pbx2")
    await engine.apply(state("pbx1"))
    with pytest.raises(ApplyFailed) as info:
        await engine.apply(state("pbx2"))
    assert info.value.message == (
        "applying failed in mode: RuntimeError('disk full'); the previous revision was re-applied"
    )
    assert machine.values == {"hostname": "pbx1", "mode": "standard"}
    assert store.head() == 1


async def test_node_check_problems_are_invalid_input(store: Store, machine: Machine) -> None:
    engine = make_engine(store, machine)
    with pytest.raises(InvalidInput) as info:
        await engine.apply(state("forbidden"))
    assert [str(p) for p in info.value.problems] == ["network.hostname: not on this node"]
    assert store.head() == 0 and machine.values == {}


async def test_loss_needs_acknowledgement(store: Store, machine: Machine) -> None:
    engine = make_engine(store, machine)
    await engine.apply(state("pbx1"))
    with pytest.raises(ConfirmationRequired) as info:
        await engine.apply(state("pbx1", "pure-cloud"))
    assert [p.message for p in info.value.problems] == ["the MCS client config is deleted"]
    assert info.value.details == {"acknowledge": [
        {"code": "mcs-client-lost", "params": {"paths": "/etc/mcs"},
         "text": "the MCS client config is deleted"}]}
    assert machine.values["mode"] == "standard"
    out = await engine.apply(state("pbx1", "pure-cloud"), options=ChangeOptions(yes=True))
    assert out.revision is not None and machine.values["mode"] == "pure-cloud"


async def test_confirmed_apply_rolls_back_without_confirm(store: Store, machine: Machine) -> None:
    engine = make_engine(store, machine)
    await engine.apply(state("pbx1"))
    # below the 1 s minimum a caller may ask for, to be quick
    quick = ChangeOptions.model_construct(confirm_within=0.05)
    out = await engine.apply(state("pbx2"), options=quick)
    assert out.confirm_deadline is not None
    assert machine.values["hostname"] == "pbx2"
    with pytest.raises(Conflict):
        await engine.apply(state("pbx3"))
    await asyncio.sleep(0.2)
    assert machine.values["hostname"] == "pbx1"
    assert store.head() == 3
    assert store.meta(3).source == "auto-rollback"
    assert store.pending() is None


async def test_confirm_keeps_the_change(store: Store, machine: Machine) -> None:
    engine = make_engine(store, machine)
    await engine.apply(state("pbx1"))
    await engine.apply(state("pbx2"), options=ChangeOptions.model_construct(confirm_within=0.1))
    meta = await engine.confirm()
    assert meta.revision == 2
    await asyncio.sleep(0.2)
    assert machine.values["hostname"] == "pbx2" and store.head() == 2
    with pytest.raises(Conflict):
        await engine.confirm()


async def test_start_reconverges_and_expires_a_stale_pending(
    store: Store, machine: Machine
) -> None:
    clock = Clock()
    engine = make_engine(store, machine, clock=clock)
    await engine.apply(state("pbx1"))
    await engine.apply(state("pbx2"), options=ChangeOptions(confirm_within=30))
    await engine.stop()
    # the agent restarts after the deadline, on a machine that lost its settings
    clock.now += 60
    fresh = Machine()
    restarted = make_engine(store, fresh, clock=clock)
    await restarted.start()
    assert fresh.values == {"hostname": "pbx1", "mode": "standard"}
    assert store.meta(store.head()).source == "auto-rollback"


async def test_start_rearms_a_pending_confirmation(store: Store, machine: Machine) -> None:
    clock = Clock()
    engine = make_engine(store, machine, clock=clock)
    await engine.apply(state("pbx1"))
    await engine.apply(state("pbx2"), options=ChangeOptions(confirm_within=30))
    await engine.stop()
    restarted = make_engine(store, machine, clock=clock)
    await restarted.start()
    assert machine.values["hostname"] == "pbx2"
    assert store.pending() is not None
    await restarted.confirm()
    assert store.pending() is None


async def test_marker_for_a_commit_that_never_happened_is_dropped(
    store: Store, machine: Machine
) -> None:
    engine = make_engine(store, machine)
    await engine.apply(state("pbx1"))
    await asyncio.to_thread(store.set_pending, Pending(2, 1, 9e9))  # killed before commit
    await make_engine(store, machine).start()
    assert store.pending() is None and store.head() == 1


async def test_a_slow_disk_does_not_stall_the_loop(store: Store, machine: Machine,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit writes (fsync) run off the event loop: the failover daemon's heartbeats share
    it, and a busy disk must not silence them for longer than the dead interval."""
    slow = SlowCall(store.commit)
    monkeypatch.setattr(store, "commit", slow)
    engine = make_engine(store, machine)
    async with loop_beats() as beats:
        outcome = await engine.apply(state("pbx1"))
    assert outcome.revision is not None and outcome.revision.revision == 1
    [span] = slow.spans
    assert ran_during(beats, span) >= 3, "the loop stood still meanwhile"


async def test_the_plan_output_carries_codes_params_and_text(
    store: Store, machine: Machine
) -> None:
    engine = make_engine(store, machine)
    await engine.apply(state("pbx1"))
    out = await engine.apply(state("pbx1", "pure-cloud"), options=ChangeOptions(dry_run=True))
    [mode] = out.to_dict()["plan"]["subsystems"]
    assert mode == {"subsystem": "mode", "steps": [], "warnings": [], "acknowledge": [
        {"code": "mcs-client-lost", "params": {"paths": "/etc/mcs"},
         "text": "the MCS client config is deleted"}]}
    assert out.to_dict()["plan"]["acknowledge"] == mode["acknowledge"]


# --- who owns what --------------------------------------------------------------------------


class Owning:
    def __init__(self, name: str, *owns: str) -> None:
        self.name = name
        self.owns = owns


@pytest.mark.parametrize(("subsystems", "message"), [
    ([Owning("network", "network"), Owning("hostname", "network")],
     "subsystems network and hostname both own 'network' of the desired state"),
    ([Owning("mode", "mode"), Owning("ha", "ha", "mode")],
     "subsystems mode and ha both own 'mode' of the desired state"),
    ([Owning("firewall", "firewall")],
     "subsystem firewall owns 'firewall', which is not a top-level key of the desired state "
     "(keys: schema_version, network, mode, ha, license)"),
    ([Owning("mode", "mode"), Owning("mode")], "two subsystems are named mode"),
])
def test_the_engine_refuses_two_owners_of_one_key(
    store: Store, subsystems: list[Owning], message: str
) -> None:
    with pytest.raises(OwnershipConflict) as info:
        Engine(store, subsystems, EventLog())  # type: ignore[arg-type]
    assert info.value.message == message
    assert info.value.code == "ownership_conflict"
    assert "one owning subsystem" in info.value.remedy


def test_subsystems_that_own_nothing_or_distinct_keys_are_accepted(store: Store) -> None:
    machine = Machine()
    Engine(store, [HostnameSubsystem(machine), ModeLike(machine), Owning("services"),
                   Owning("licence", "license")], EventLog())  # type: ignore[list-item]
