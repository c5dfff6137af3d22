"""The network plan: its sentences, codes and params, from the two documents alone."""

from __future__ import annotations

from agent.network.plan import plan_network
from agent.network.subsystem import NetworkSubsystem
from agent.state.model import DesiredState
from agent.subsystems.base import SubsystemPlan, texts
from tests.unit.purity import Untouchable, forbid_io
from tests.unit.test_network_subsystem import BASE, state

HINT = "consider --confirm-within so a lock-out rolls back"


def plan(old: DesiredState | None, new: DesiredState) -> SubsystemPlan:
    """Through the subsystem, with ports that refuse any use and no I/O allowed."""
    sub = NetworkSubsystem(Untouchable("netlink"), Untouchable("files"), Untouchable("hostname"))
    with forbid_io():
        return sub.plan(old, new, None)


def test_plan_first_start_plans_everything() -> None:
    result = plan(None, BASE)
    assert texts(result.steps) == (
        "eth0: configure",
        "eth0: add 10.0.0.11/24",
        "default route via 10.0.0.1",
        "hostname pbx1",
        "DNS servers 10.0.0.2",
        "NTP servers 10.0.0.5",
    )
    assert result.warnings == ()
    assert [(s.code, dict(s.params)) for s in result.steps] == [
        ("interface-configure", {"interface": "eth0"}),
        ("address-add", {"interface": "eth0", "address": "10.0.0.11/24"}),
        ("default-route-set", {"new": "10.0.0.1"}),
        ("hostname-set", {"new": "pbx1"}),
        ("dns-set", {"new": "10.0.0.2"}),
        ("ntp-set", {"new": "10.0.0.5", "fallback_pool": "2.almalinux.pool.ntp.org"}),
    ]


def test_plan_address_and_gateway_change() -> None:
    old = state(gateway="10.0.0.254", dns=["10.0.0.2"])
    new = state(interfaces={"eth0": {"addresses": ["10.0.0.12/24"], "mtu": 9000}},
                gateway="10.0.0.1", hostname="pbx2", dns=["10.0.0.3", "10.0.0.4"],
                search=["example.com"], ntp=["ntp.example.com"])
    result = plan(old, new)
    assert texts(result.steps) == (
        "eth0: mtu 9000",
        "eth0: add 10.0.0.12/24",
        "eth0: remove 10.0.0.11/24",
        "default route via 10.0.0.1 (was 10.0.0.254)",
        "hostname pbx1 → pbx2",
        "DNS servers 10.0.0.2 → 10.0.0.3, 10.0.0.4",
        "search domains none → example.com",
        "NTP servers none (pool 2.almalinux.pool.ntp.org) → ntp.example.com",
    )
    assert texts(result.warnings) == (
        f"sessions to 10.0.0.11 will drop; {HINT}",
        f"sessions from other networks through 10.0.0.254 will drop; {HINT}",
    )
    assert [(s.code, dict(s.params)) for s in result.steps] == [
        ("interface-mtu-set", {"interface": "eth0", "new": 9000}),
        ("address-add", {"interface": "eth0", "address": "10.0.0.12/24"}),
        ("address-remove", {"interface": "eth0", "address": "10.0.0.11/24"}),
        ("default-route-change", {"old": "10.0.0.254", "new": "10.0.0.1"}),
        ("hostname-change", {"old": "pbx1", "new": "pbx2"}),
        ("dns-change", {"old": "10.0.0.2", "new": "10.0.0.3,10.0.0.4"}),
        ("search-change", {"old": "", "new": "example.com"}),
        ("ntp-change", {"old": "", "new": "ntp.example.com",
                        "fallback_pool": "2.almalinux.pool.ntp.org"}),
    ]
    assert [(w.code, dict(w.params)) for w in result.warnings] == [
        ("sessions-drop-address", {"address": "10.0.0.11"}),
        ("sessions-drop-gateway", {"gateway": "10.0.0.254"}),
    ]


def test_plan_removed_interface_and_gateway() -> None:
    old = state(interfaces={"eth0": {"addresses": ["10.0.0.11/24"]},
                            "eth1": {"addresses": ["10.1.0.11/24"], "dhcp": True}},
                gateway="10.0.0.1")
    new = state(dns=[])
    result = plan(old, new)
    assert texts(result.steps) == (
        "eth1: remove 10.1.0.11/24",
        "eth1: no longer configured (its keyfile is deleted)",
        "remove default route via 10.0.0.1",
    )
    assert texts(result.warnings) == (
        f"sessions to 10.1.0.11 will drop; {HINT}",
        f"without a default route only the node's own subnets reach it; {HINT}",
    )
    assert [s.code for s in result.steps] == [
        "address-remove", "interface-deconfigure", "default-route-remove"]
    assert [w.code for w in result.warnings] == ["sessions-drop-address", "no-default-route"]


def test_plan_mtu_dhcp_domain_and_dns_edits() -> None:
    old = state(interfaces={"eth0": {"addresses": ["10.0.0.11/24"], "mtu": 1500}},
                domain="pbx.example.com", dns=["10.0.0.2"])
    new = state(interfaces={"eth0": {"addresses": ["10.0.0.11/24"], "mtu": 9000,
                                     "dhcp": True}}, dns=[])
    result = plan(old, new)
    assert [(s.code, s.text, dict(s.params)) for s in result.steps] == [
        ("interface-mtu-change", "eth0: mtu 1500 → 9000",
         {"interface": "eth0", "old": 1500, "new": 9000}),
        ("interface-dhcp", "eth0: DHCP on", {"interface": "eth0", "enabled": True}),
        ("domain-change", "domain pbx.example.com → none",
         {"old": "pbx.example.com", "new": None}),
        ("dns-change", "DNS servers 10.0.0.2 → none", {"old": "10.0.0.2", "new": ""}),
    ]
    [warning] = result.warnings
    assert warning.code == "no-dns" and warning.params == {}
    unset = plan(new, state(interfaces={"eth0": {"addresses": ["10.0.0.11/24"],
                                                 "dhcp": True}}, dns=[]))
    assert [(s.code, s.text) for s in unset.steps] == [
        ("interface-mtu-unset", "eth0: mtu no longer set (stays 9000 until reboot)")]


def test_plan_of_an_unchanged_state_is_empty() -> None:
    assert plan(BASE, BASE).empty


def test_the_subsystem_plans_what_plan_network_says() -> None:
    old = state(gateway="10.0.0.254")
    assert plan(old, BASE) == plan_network(old.network, BASE.network)
