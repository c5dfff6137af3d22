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
from tests.unit.conftest import Golden
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
    step, replication, firewall = result.steps
    assert firewall.code == "ha-firewall"
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
    [restart] = result.warnings  # the database takes the pair's settings
    assert (restart.code, restart.params) == ("ha-database-restart", {"unit": "mariadb.service"})
    assert "the PBX loses its database for a moment" in restart.text
    assert plan(state(), state(profile="fast"), KEYED).warnings == ()  # not again


def test_without_a_pair_key_the_plan_says_how_to_get_one() -> None:
    _, warning = plan(None, state(), UNKEYED).warnings
    assert (warning.code, warning.text) == (
        "ha-no-pair-key", "no pair key yet: run `voxnode ha pair-key generate` (or `set`)")


def test_a_change_of_the_pairs_settings_is_applied_in_place() -> None:
    result = plan(state(), state(profile="fast", heartbeat_port=700), KEYED)
    step, firewall = result.steps  # the heartbeat port moves in the firewall too
    assert firewall.code == "ha-firewall" and "700/udp" in firewall.text
    assert step.code == "ha-reconfigure"
    assert step.params == {"changed": "port,profile", "node_ips": "eth0=10.0.0.10/24"}
    assert step.text == ("reconfigure fault tolerance in place, keeping the role and the node "
                         "IP (changed: port, profile; node IP 10.0.0.10/24 on eth0)")


def test_turning_it_off_warns_that_failover_ends() -> None:
    result = plan(state(), state(enabled=False), KEYED)
    assert [(i.code, i.text) for i in (*result.steps, *result.warnings)] == [
        ("ha-stop", "stop fault tolerance (a master releases the node IP)"),
        ("ha-firewall", "close the pair's ports in the firewall (remove voxnode-pair-peer)"),
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
    step, firewall = result.steps  # no database: its port closes
    assert firewall.text == ("open the pair's ports in the firewall (from 10.0.0.12 only: "
                             "ssh, 694/udp, 27017/tcp)")
    assert step.code == "ha-replication"
    assert step.text == ("replication: no database replication; file paths: none (2048 "
                         "KiB/s); lag limit 12 s")


# --- the pair's ports in the firewall --------------------------------------------------------


def test_the_pair_opens_its_ports_to_the_peer_only(golden: Golden) -> None:
    from ha.firewall import pair_zones, render_zone

    zones = pair_zones(state(arbiter={"address": "10.0.0.5"}))
    assert [(z.name, str(z.source)) for z in zones] == [
        ("voxnode-pair-peer", "10.0.0.12"), ("voxnode-pair-arbiter", "10.0.0.5")]
    peer, arbiter = zones
    # 7422: the replication's SSH daemon (the database's full sync goes through it)
    assert peer.ports == ((694, "udp"), (3306, "tcp"), (27017, "tcp"), (7422, "tcp"))
    assert peer.services == ("ssh",)
    assert arbiter.ports == ((27017, "tcp"),) and arbiter.services == ()
    golden.check("ha/voxnode-pair-peer.xml", render_zone(peer))
    golden.check("ha/voxnode-pair-arbiter.xml", render_zone(arbiter))
    for zone in zones:
        text = render_zone(zone)
        assert text.count("<source ") == 1 and f'address="{zone.source}/32"' in text
        assert "0.0.0.0" not in text and "/24" not in text
    # the database's port follows the document; without a database it is not opened
    assert pair_zones(state(heartbeat_port=700, replication={"database": {"port": 3307}})
                      )[0].ports == ((700, "udp"), (3307, "tcp"), (27017, "tcp"), (7422, "tcp"))
    nothing = pair_zones(state(replication={"database": {"engine": "none"}}))[0].ports
    assert (3306, "tcp") not in nothing and (7422, "tcp") not in nothing
    assert pair_zones(state(enabled=False)) == ()
    assert (7422, "tcp") in pair_zones(state(replication={"paths": ["/srv/rec"]}))[0].ports


def test_pairing_writes_the_zones_and_dissolving_removes_them(tmp_path: Path) -> None:
    files = FileTree(tmp_path / "root")
    sub = HASubsystem(cast(HAManager, Untouchable("failover manager")), files)
    zones = tmp_path / "root" / "etc" / "firewalld" / "zones"
    done = sub._sync_firewall(state(arbiter={"address": "10.0.0.5"}))
    assert sorted(p.name for p in zones.iterdir()) == ["voxnode-pair-arbiter.xml",
                                                       "voxnode-pair-peer.xml"]
    assert [c.action for c in done] == ["write", "write", "skip"]  # no firewalld here
    assert sub._sync_firewall(state(arbiter={"address": "10.0.0.5"})) == []  # unchanged
    done = sub._sync_firewall(state())  # the arbiter goes: its zone too
    assert sorted(p.name for p in zones.iterdir()) == ["voxnode-pair-peer.xml"]
    assert [c.action for c in done] == ["remove", "skip"]
    sub._sync_firewall(state(enabled=False))
    assert list(zones.iterdir()) == []
    plan_text = [s.text for s in plan(state(), state(enabled=False), KEYED).steps]
    assert "close the pair's ports in the firewall (remove voxnode-pair-peer)" in plan_text
    [opened] = [s for s in plan(state(enabled=False), state(), KEYED).steps
                if s.code == "ha-firewall"]
    assert opened.text == ("open the pair's ports in the firewall (from 10.0.0.12 only: ssh, "
                           "694/udp, 3306/tcp, 27017/tcp, 7422/tcp)")
