"""Pure helpers: KEY=VALUE edits, document diffs, schema migrations."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import InvalidInput
from agent.state.diff import FieldChange, diff_documents
from agent.state.edit import edit_mode, edit_network
from agent.state.migrations import migrate

DOC: dict[str, Any] = {
    "schema_version": 2,
    "network": {"hostname": "pbx1", "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}},
                "gateway": "10.0.0.1", "dns": ["10.0.0.2"]},
    "mode": "standard",
}


def test_edit_network_sets_scalars_lists_and_interfaces() -> None:
    new = edit_network(DOC, {
        "hostname": "pbx2", "dns": "10.0.0.2, 10.0.0.3",
        "interfaces.eth1.addresses": "10.1.0.11/24", "interfaces.eth1.dhcp": "no",
        "interfaces.eth1.mtu": "1400",
    }, ["gateway"])
    net = new["network"]
    assert net["hostname"] == "pbx2"
    assert net["dns"] == ["10.0.0.2", "10.0.0.3"]
    assert net["interfaces"]["eth1"] == {"addresses": ["10.1.0.11/24"], "dhcp": False,
                                         "mtu": 1400}
    assert "gateway" not in net
    assert DOC["network"]["hostname"] == "pbx1"  # the input is not modified


def test_edit_network_removes_an_interface_and_empties_a_list() -> None:
    new = edit_network(DOC, {"dns": ""}, ["interfaces.eth0"])
    assert new["network"]["interfaces"] == {}
    assert new["network"]["dns"] == []


def test_edit_network_reports_every_bad_setting() -> None:
    with pytest.raises(InvalidInput) as info:
        edit_network(DOC, {"hostnme": "x", "interfaces.eth0.dhcp": "perhaps",
                           "interfaces.eth0.mtu": "big"}, ["hostname", "interfaces.eth9"])
    assert [str(p) for p in info.value.problems] == [
        "hostnme: unknown setting (allowed: hostname, domain, public_ip, gateway, dns, search, "
        "ntp, interfaces.IF.addresses, interfaces.IF.dhcp, interfaces.IF.mtu)",
        "interfaces.eth0.dhcp: 'perhaps' is not true or false",
        "interfaces.eth0.mtu: 'big' is not a whole number",
        "hostname: cannot be unset (unsettable: domain, public_ip, gateway, dns, search, ntp, "
        "interfaces.IF, interfaces.IF.mtu)",
        "interfaces.eth9: interface eth9 is not configured",
    ]


def test_edit_network_with_nothing_to_do_is_an_error() -> None:
    with pytest.raises(InvalidInput):
        edit_network(DOC, {}, [])


def test_edit_mode() -> None:
    assert edit_mode(DOC, "pure-cloud")["mode"] == "pure-cloud"
    assert DOC["mode"] == "standard"


def test_diff_lists_changed_added_and_removed_leaves() -> None:
    new = edit_network(DOC, {"hostname": "pbx2", "ntp": "10.0.0.5"}, ["gateway"])
    assert diff_documents(DOC, new) == [
        FieldChange("network.gateway", "10.0.0.1", None),
        FieldChange("network.hostname", "pbx1", "pbx2"),
        FieldChange("network.ntp", None, ["10.0.0.5"]),
    ]
    assert diff_documents(DOC, DOC) == []
    assert FieldChange("mode", None, "standard") in diff_documents(None, DOC)


def test_migrations_run_in_order_and_bump_the_version() -> None:
    steps = {
        1: lambda d: {**d, "schema_version": 2, "network": {**d["network"], "renamed": True}},
        2: lambda d: {**d, "schema_version": 3, "extra": "added in 3"},
    }
    out = migrate({"schema_version": 1, "network": {}}, migrations=steps, current=3)
    assert out == {"schema_version": 3, "network": {"renamed": True}, "extra": "added in 3"}


def test_a_migration_that_forgets_the_version_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        migrate({"schema_version": 1}, migrations={1: lambda d: d}, current=2)


def test_current_version_passes_through_unchanged() -> None:
    assert migrate(DOC) == DOC


def test_versions_older_than_the_oldest_migration_are_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        migrate({"schema_version": 0}, migrations={1: lambda d: d}, current=2)
    assert str(info.value.problems[0]) == "schema_version: 0 is not a known version (1-2)"
