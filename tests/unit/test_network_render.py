"""Rendered network files: golden text per configuration, plus NetworkManager keyfile rules."""

from __future__ import annotations

import configparser
from pathlib import PurePosixPath
from typing import Any

import pytest

from agent.network.render import connection_uuid, keyfile_path, render_all
from agent.state.document import validate_document
from agent.state.model import NetworkConfig
from tests.unit.conftest import Golden


def _net(network: dict[str, Any]) -> NetworkConfig:
    return validate_document({"schema_version": 1, "network": network}).network


CASES: dict[str, dict[str, Any]] = {
    "static": {
        "hostname": "pbx1",
        "domain": "example.com",
        "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}},
        "gateway": "10.0.0.1",
        "dns": ["10.0.0.2", "10.0.0.3"],
        "search": ["example.com", "corp.example.com"],
        "ntp": ["10.0.0.5", "ntp.example.com"],
    },
    "two-nics": {
        "hostname": "pbx2",
        "interfaces": {
            "eth0": {"addresses": ["10.0.0.12/24"]},
            "eth1": {"addresses": ["10.1.0.12/24", "10.1.0.13/24"]},
        },
        "gateway": "10.1.0.1",
        "dns": ["10.1.0.2"],
        "ntp": ["10.1.0.5"],
    },
    "dhcp": {
        "hostname": "pbx3",
        "domain": "example.com",
        "interfaces": {"eth0": {"dhcp": True}},
    },
    "ipv6": {
        "hostname": "pbx4",
        "interfaces": {"eth0": {"addresses": ["10.0.0.14/24", "2001:db8::14/64"]}},
        "gateway": "2001:db8::1",
        "dns": ["2001:db8::53", "10.0.0.2"],
        "search": ["example.com"],
        "ntp": ["2001:db8::123"],
    },
    "mtu-no-ntp": {
        "hostname": "pbx5",
        "interfaces": {
            "eth0": {"addresses": ["10.0.0.15/24"], "mtu": 9000},
            "eth1": {"dhcp": True, "mtu": 1400},
        },
        "gateway": "10.0.0.1",
        "dns": ["10.0.0.2"],
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_files_match_golden(case: str, golden: Golden) -> None:
    for rendered in render_all(_net(CASES[case])):
        golden.check(f"network/{case}/{PurePosixPath(rendered.path).name}", rendered.content)


def test_paths_and_modes() -> None:
    files = {f.path: f.mode for f in render_all(_net(CASES["two-nics"]))}
    assert files == {
        "/etc/NetworkManager/system-connections/voxnode-eth0.nmconnection": 0o600,
        "/etc/NetworkManager/system-connections/voxnode-eth1.nmconnection": 0o600,
        "/etc/NetworkManager/conf.d/90-voxnode.conf": 0o644,
        "/etc/hostname": 0o644,
        "/etc/resolv.conf": 0o644,
        "/etc/chrony.conf": 0o644,
    }


def test_connection_uuid_is_stable_and_per_interface() -> None:
    assert connection_uuid("eth0") == connection_uuid("eth0")
    assert connection_uuid("eth0") != connection_uuid("eth1")
    assert connection_uuid("eth0").version == 5


def _keyfiles(case: str) -> dict[str, configparser.ConfigParser]:
    net = _net(CASES[case])
    out = {}
    contents = {f.path: f.content for f in render_all(net)}
    for ifname in net.interfaces:
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.read_string(contents[keyfile_path(ifname)])
        out[ifname] = parser
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_keyfiles_follow_networkmanager_rules(case: str) -> None:
    """The rules NetworkManager enforces when it loads a keyfile (nm-setting-ip-config)."""
    for ifname, kf in _keyfiles(case).items():
        assert kf["connection"]["interface-name"] == ifname
        assert kf["connection"]["id"] == f"voxnode-{ifname}"
        assert kf["connection"]["type"] == "ethernet"
        for section in ("ipv4", "ipv6"):
            keys = kf[section]
            method = keys["method"]
            assert method in ("auto", "manual", "disabled", "ignore")
            addresses = [k for k in keys if k.startswith("address")]
            if method in ("disabled", "ignore"):
                assert set(keys) == {"method"}, f"{ifname} [{section}] has keys NM rejects"
            if method == "manual":
                assert addresses, f"{ifname} [{section}] manual without an address"
            if "gateway" in keys:
                assert addresses, f"{ifname} [{section}] gateway without an address"
            for key in ("dns", "dns-search"):
                if key in keys:
                    assert keys[key].endswith(";")


def test_gateway_and_dns_go_to_the_gateway_interface() -> None:
    kf = _keyfiles("two-nics")
    assert "gateway" not in kf["eth0"]["ipv4"] and "dns" not in kf["eth0"]["ipv4"]
    assert kf["eth1"]["ipv4"]["gateway"] == "10.1.0.1"
    assert kf["eth1"]["ipv4"]["dns"] == "10.1.0.2;"


def test_dns_servers_split_by_family() -> None:
    kf = _keyfiles("ipv6")["eth0"]
    assert kf["ipv4"]["dns"] == "10.0.0.2;"
    assert kf["ipv6"]["dns"] == "2001:db8::53;"
    assert kf["ipv6"]["gateway"] == "2001:db8::1"
    assert "dns-search" in kf["ipv6"] and "dns-search" not in kf["ipv4"]


def test_dhcp_without_dns_leaves_resolv_conf_to_networkmanager() -> None:
    dhcp = _net({"hostname": "pbx1", "interfaces": {"eth0": {"dhcp": True}}})
    paths = {f.path for f in render_all(dhcp)}
    assert "/etc/resolv.conf" not in paths
    assert "dns=none" not in next(f.content for f in render_all(dhcp) if f.path.endswith(
        "90-voxnode.conf"))
    static = _net({"hostname": "pbx1", "interfaces": {"eth0": {"dhcp": True}},
                   "dns": ["10.0.0.2"]})
    assert "/etc/resolv.conf" in {f.path for f in render_all(static)}
