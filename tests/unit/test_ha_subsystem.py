"""The ha subsystem: its plan from the documents and the observed pair key, and observe()."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from agent.events import EventLog
from agent.ha.subsystem import HAObservation, HASubsystem
from agent.ports.files import FileTree
from agent.ports.netlink_memory import MemoryNetlink
from agent.state.document import validate_document
from agent.state.model import DesiredState
from agent.subsystems.base import SubsystemPlan
from ha.manager import HAManager
from tests.unit.purity import Untouchable, forbid_io

KEYED, UNKEYED = HAObservation(pair_key_installed=True), HAObservation(pair_key_installed=False)


def state(enabled: bool = True, dns: str = "10.0.0.2", **ha: Any) -> DesiredState:
    return validate_document({
        "schema_version": 1,
        "network": {"hostname": "pbx1", "gateway": "10.0.0.1", "dns": [dns],
                    "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}}},
        "ha": {"enabled": True, "peer": "10.0.0.12",
               "shared_ips": [{"interface": "eth0", "address": "10.0.0.10/24",
                               "primary": True}], **ha} if enabled else {"enabled": False},
    })


def plan(old: DesiredState | None, new: DesiredState, observed: HAObservation
         ) -> SubsystemPlan:
    """With a manager that refuses any use and no I/O allowed: the plan gets the pair key
    from the observation only."""
    sub = HASubsystem(cast(HAManager, Untouchable("failover manager")))
    with forbid_io():
        return sub.plan(old, new, observed)


def test_turning_fault_tolerance_on() -> None:
    result = plan(state(enabled=False), state(), KEYED)
    step, replication = result.steps
    assert replication.to_dict() == {
        "code": "ha-replication",
        "params": {"database": "/run/mysqld/mysqld.sock", "paths": "", "bandwidth_kb": 2048,
                   "max_lag_s": 5.0},
        "text": "replication: the database on /run/mysqld/mysqld.sock follows the roles "
                "(replica of 10.0.0.12 while slave); file paths: none (2048 KiB/s); lag "
                "limit 5 s",
    }
    assert step.to_dict() == {
        "code": "ha-start",
        "params": {"peer": "10.0.0.12", "profile": "standard", "node_ips": "eth0=10.0.0.10/24"},
        "text": "run fault tolerance with peer 10.0.0.12 (standard profile; node IP "
                "10.0.0.10/24 on eth0)",
    }
    assert result.warnings == ()


def test_without_a_pair_key_the_plan_says_how_to_get_one() -> None:
    [warning] = plan(None, state(), UNKEYED).warnings
    assert (warning.code, warning.text) == (
        "ha-no-pair-key", "no pair key yet: run `voxnode ha pair-key generate` (or `set`)")


def test_a_change_of_the_pairs_settings_is_applied_in_place() -> None:
    result = plan(state(), state(profile="fast", heartbeat_port=700), KEYED)
    [step] = result.steps
    assert step.code == "ha-reconfigure"
    assert step.params == {"changed": "port,profile", "node_ips": "eth0=10.0.0.10/24"}
    assert step.text == ("reconfigure fault tolerance in place, keeping the role and the node "
                         "IP (changed: port, profile; node IP 10.0.0.10/24 on eth0)")


def test_turning_it_off_warns_that_failover_ends() -> None:
    result = plan(state(), state(enabled=False), KEYED)
    assert [(i.code, i.text) for i in (*result.steps, *result.warnings)] == [
        ("ha-stop", "stop fault tolerance (a master releases the node IP)"),
        ("ha-no-failover", "this node stops taking part in the pair: no failover any more"),
    ]


def test_an_edit_outside_the_pairs_settings_plans_nothing() -> None:
    assert plan(state(), state(dns="10.0.0.3"), UNKEYED).empty
    assert plan(state(enabled=False), state(enabled=False), UNKEYED).empty


async def test_observe_reports_whether_the_manager_holds_a_key(tmp_path: Path) -> None:
    manager = HAManager(tmp_path / "ha", MemoryNetlink(), EventLog())
    sub = HASubsystem(manager)
    assert await sub.observe(state()) == UNKEYED
    manager.key_installed = True  # as install_key leaves it
    assert await sub.observe(state()) == KEYED


# --- check: the replicated paths exist on the node ------------------------------------------


async def test_replicated_paths_must_exist_as_directories(tmp_path: Path) -> None:
    files = FileTree(tmp_path / "root")
    sub = HASubsystem(cast(HAManager, Untouchable("failover manager")), files)
    (tmp_path / "root" / "srv" / "rec").mkdir(parents=True)
    (tmp_path / "root" / "srv" / "file").write_text("x")
    (tmp_path / "root" / "srv" / "link").symlink_to(tmp_path / "root" / "srv" / "rec")
    paths = ["/srv/rec", "/srv/missing", "/srv/file", "/srv/link"]
    problems = await sub.check(state(replication={"paths": paths}))
    assert [str(p) for p in problems] == [
        "ha.replication.paths[1]: /srv/missing does not exist on this node (create it, or "
        "install what owns it, first)",
        "ha.replication.paths[2]: /srv/file is not a directory",
        "ha.replication.paths[3]: /srv/link is a symbolic link: give the directory it points to",
    ]
    assert await sub.check(state(replication={"paths": ["/srv/rec"]})) == []


def test_a_change_of_replication_alone_is_planned_without_touching_the_pair() -> None:
    result = plan(state(), state(replication={"max_lag_s": 12, "database": {"engine": "none"}}),
                  KEYED)
    [step] = result.steps
    assert step.code == "ha-replication"
    assert step.text == ("replication: no database replication; file paths: none (2048 "
                         "KiB/s); lag limit 12 s")
