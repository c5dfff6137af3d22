"""Rendered working-mode files against reviewed golden files (UPDATE_GOLDEN=1 rewrites)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.mode.render import (
    nat_private_address,
    render_coturn,
    render_pjsip,
    render_working_mode_json,
)
from agent.state.document import validate_document
from agent.state.model import DesiredState
from tests.unit.conftest import Golden

SECRET = "0123456789abcdef" * 4  # a fake secret: real ones never appear in the repository


def state(mode: str = "standard", **network: Any) -> DesiredState:
    net: dict[str, Any] = {
        "hostname": "pbx1",
        "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}},
        "gateway": "10.0.0.1",
    }
    if mode == "pure-cloud":
        net |= {"domain": "pbx.example.com", "public_ip": "203.0.113.10"}
    net |= network
    return validate_document({"schema_version": 1, "network": net, "mode": mode})


TWO_INTERFACES = {
    "interfaces": {
        "eth1": {"addresses": ["192.168.50.11/24", "fd00:50::11/64"]},
        "eth0": {"addresses": ["10.0.0.11/24"]},
    },
}


def test_pjsip_standard(golden: Golden) -> None:
    golden.check("mode/pjsip_standard.conf", render_pjsip(state()))


def test_pjsip_pure_cloud_two_interfaces(golden: Golden) -> None:
    text = render_pjsip(state("pure-cloud", **TWO_INTERFACES))
    golden.check("mode/pjsip_pure_cloud.conf", text)
    # IPv4 transport: only the IPv4 subnets are local, in document order
    assert [line for line in text.splitlines() if line.startswith("local_net=")] == [
        "local_net=192.168.50.0/24",
        "local_net=10.0.0.0/24",
    ]


def test_coturn_pure_cloud(golden: Golden) -> None:
    text = render_coturn(state("pure-cloud", **TWO_INTERFACES), SECRET)
    golden.check("mode/turnserver.conf", text)


def test_working_mode_json(golden: Golden) -> None:
    text = render_working_mode_json(state("pure-cloud"))
    golden.check("mode/working-mode.pure-cloud.json", text)
    standard = json.loads(render_working_mode_json(state()))
    assert standard["mode"] == "standard"
    assert standard["turn"] is None
    assert standard["settings"]["sip_transport"] == "udp"


def test_nat_address_is_on_the_gateway_interface() -> None:
    # eth1 comes first in the document, but the gateway (10.0.0.1) is on eth0
    assert str(nat_private_address(state("pure-cloud", **TWO_INTERFACES))) == "10.0.0.11"


def test_dhcp_only_maps_the_public_ip_alone() -> None:
    dhcp = state("pure-cloud", interfaces={"eth0": {"dhcp": True}}, gateway=None)
    text = render_coturn(dhcp, SECRET)
    assert "external-ip=203.0.113.10\n" in text
    assert "relay-ip" not in text
    assert "allowed-peer-ip" not in text
    assert "local_net" not in render_pjsip(dhcp)


def test_ipv6_public_address_binds_the_tls_transport_on_ipv6() -> None:
    text = render_pjsip(state("pure-cloud", public_ip="2001:db8::10", **TWO_INTERFACES))
    assert "bind=[::]:5061\n" in text
    assert "external_media_address=2001:db8::10\n" in text
    assert [line for line in text.splitlines() if line.startswith("local_net=")] == [
        "local_net=fd00:50::/64"
    ]


def test_pure_cloud_renderers_refuse_a_standard_state() -> None:
    with pytest.raises(ValueError, match="pure-cloud"):
        render_coturn(state(), SECRET)
