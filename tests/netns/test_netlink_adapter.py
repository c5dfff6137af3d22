"""PyRoute2Netlink and the network subsystem against a real kernel, inside a namespace.

The adapter works in the namespace of its own process, so every step runs in a Python
process started with ``ip netns exec``; the results are read back with ``ip -j``, never
with the adapter's own readers. Only 10.x addresses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.netns.conftest import Netns

pytestmark = pytest.mark.root

# Runs a list of operations against PyRoute2Netlink (one asyncio.run) and prints one JSON
# result per operation: {"ok": ...} or {"error": class name, "message", "errno"}.
DRIVER = r"""
import asyncio, dataclasses, ipaddress, json, sys
from pathlib import Path
from agent.errors import VoxnodeError
from agent.ports.files import FileTree
from agent.ports.netlink import PyRoute2Netlink
from agent.state.document import validate_document
from agent.network.subsystem import NetworkSubsystem

def plain(value):
    if dataclasses.is_dataclass(value):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)

def doc(network):
    return None if network is None else validate_document(
        {"schema_version": 1, "network": network})

async def run(port, op, *args):
    if op == "apply":
        old, new, root = args
        subsystem = NetworkSubsystem(port, FileTree(Path(root)), None)
        return [str(c) for c in await subsystem.apply(doc(old), doc(new))]
    if op in ("add_address", "delete_address"):
        args = (args[0], ipaddress.ip_interface(args[1]), *args[2:])
    if op in ("replace_default_route", "delete_default_route"):
        args = (ipaddress.ip_address(args[0]),)
    return await getattr(port, op)(*args)

async def main():
    port = PyRoute2Netlink()
    out = []
    try:
        for op in json.loads(sys.argv[1]):
            try:
                out.append({"ok": plain(await run(port, *op))})
            except VoxnodeError as exc:
                out.append({"error": type(exc).__name__, "message": exc.message,
                            "errno": exc.details.get("errno")})
    finally:
        await port.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def drive(ns: Netns, *ops: list[Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(ns.python(DRIVER, json.dumps(list(ops))))
    return result


@pytest.fixture
def ns(netns: Netns) -> Netns:
    """The namespace with a veth pair vx0/vx0p; vx0p is up, vx0 is down."""
    netns.ip("link", "add", "vx0", "type", "veth", "peer", "name", "vx0p")
    netns.ip("link", "set", "vx0p", "up")
    return netns


def link(ns: Netns, ifname: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = ns.ip_json("addr", "show", "dev", ifname)
    return found[0]


def inet(ns: Netns, ifname: str) -> dict[str, dict[str, Any]]:
    """IPv4 addresses of ``ifname`` by CIDR, as ``ip -j`` reports them."""
    return {
        f"{a['local']}/{a['prefixlen']}": a
        for a in link(ns, ifname)["addr_info"] if a["family"] == "inet"
    }


def default_gateways(ns: Netns) -> list[str]:
    return [r.get("gateway", "") for r in ns.ip_json("-4", "route", "show", "default")]


def test_mtu_up_and_labelled_address(ns: Netns) -> None:
    results = drive(
        ns,
        ["set_mtu", "vx0", 1400],
        ["set_link_up", "vx0"],
        ["add_address", "vx0", "10.77.0.2/24", "vx0"],
        ["add_address", "vx0", "10.77.0.2/24", "vx0"],
    )
    assert results[:3] == [{"ok": None}] * 3
    assert results[3] == {"error": "AddressExists", "errno": "EEXIST",
                          "message": "address 10.77.0.2/24 is already on vx0"}
    seen = link(ns, "vx0")
    assert seen["mtu"] == 1400
    assert "UP" in seen["flags"]
    assert inet(ns, "vx0")["10.77.0.2/24"]["label"] == "vx0"


def test_unknown_interface_is_an_operator_sentence(ns: Netns) -> None:
    [result] = drive(ns, ["set_link_up", "eth9"])
    assert result == {
        "error": "InterfaceMissing", "errno": "ENODEV",
        "message": "interface eth9 does not exist on this node (present: lo, vx0, vx0p)",
    }


def test_delete_address_and_missing_address(ns: Netns) -> None:
    ns.ip("addr", "add", "10.77.0.3/24", "dev", "vx0")
    results = drive(ns, ["delete_address", "vx0", "10.77.0.3/24"],
                    ["delete_address", "vx0", "10.77.0.3/24"])
    assert results[0] == {"ok": None}
    assert results[1]["error"] == "AddressMissing"
    assert results[1]["errno"] == "EADDRNOTAVAIL"
    assert "10.77.0.3/24" not in inet(ns, "vx0")


def test_links_report_labels_scopes_and_dynamic_addresses(ns: Netns) -> None:
    ns.ip("addr", "add", "10.77.0.9/24", "dev", "vx0", "valid_lft", "300", "preferred_lft", "300")
    ns.ip("addr", "add", "10.77.0.100/24", "dev", "vx0", "label", "vx0:vip")
    ns.ip("link", "set", "vx0", "mtu", "1300")
    [result] = drive(ns, ["links"])
    links = {entry["name"]: entry for entry in result["ok"]}
    assert set(links) == {"lo", "vx0", "vx0p"}
    assert links["vx0"]["mtu"] == 1300 and links["vx0"]["up"] is False
    assert links["vx0p"]["up"] is True
    addrs = {a["interface"]: a for a in links["vx0"]["addresses"]}
    assert addrs["10.77.0.9/24"] == {"interface": "10.77.0.9/24", "label": "vx0",
                                     "scope": "global", "permanent": False}
    assert addrs["10.77.0.100/24"]["label"] == "vx0:vip"
    assert addrs["10.77.0.100/24"]["permanent"] is True
    assert {a["interface"]: a["scope"] for a in links["lo"]["addresses"]}["127.0.0.1/8"] == "host"


def test_addresses_of_one_interface(ns: Netns) -> None:
    ns.ip("addr", "add", "10.77.0.4/24", "dev", "vx0")
    ns.ip("addr", "add", "10.77.0.100/24", "dev", "vx0", "label", "vx0:vip")
    ns.ip("addr", "add", "10.77.0.5/24", "dev", "vx0p")
    results = drive(ns, ["addresses", "vx0"], ["addresses", "vx0p"], ["addresses", "eth9"])
    assert [a["interface"] for a in results[0]["ok"]] == ["10.77.0.4/24", "10.77.0.100/24"]
    assert results[0]["ok"][1]["label"] == "vx0:vip"
    assert [a["interface"] for a in results[1]["ok"] if a["scope"] == "global"] == [
        "10.77.0.5/24"]
    assert results[2] == {"ok": []}


def test_default_route_replace_and_delete(ns: Netns) -> None:
    ns.ip("link", "set", "vx0", "up")
    ns.ip("addr", "add", "10.77.0.2/24", "dev", "vx0")
    results = drive(ns, ["replace_default_route", "10.77.0.1"])
    assert results == [{"ok": None}]
    assert default_gateways(ns) == ["10.77.0.1"]
    ns.ip("route", "add", "default", "via", "10.77.0.1", "metric", "100")  # NM's copy at boot
    results = drive(
        ns,
        ["replace_default_route", "10.77.0.254"],
        ["default_routes", 4],
        ["delete_default_route", "10.77.0.1"],
        ["delete_default_route", "10.77.0.1"],
        ["replace_default_route", "10.99.0.1"],
    )
    assert results[0] == {"ok": None}
    assert sorted((r["gateway"], r["metric"]) for r in results[1]["ok"]) == [
        ("10.77.0.1", 100), ("10.77.0.254", 0)]
    assert results[2] == {"ok": None}
    assert results[3]["error"] == "RouteMissing"
    assert results[4] == {
        "error": "GatewayUnreachable", "errno": "ENETUNREACH",
        "message": "cannot route via 10.99.0.1: no interface that is up has an address in "
                   "its subnet",
    }
    assert default_gateways(ns) == ["10.77.0.254"]


def _net(*addresses: str, gateway: str | None = "10.77.0.1") -> dict[str, Any]:
    doc: dict[str, Any] = {"hostname": "pbx1",
                           "interfaces": {"vx0": {"addresses": list(addresses), "mtu": 1400}}}
    if gateway:
        doc["gateway"] = gateway
    return doc


def test_subsystem_converges_a_real_kernel(ns: Netns, tmp_path: Path) -> None:
    ns.ip("addr", "add", "10.78.0.5/24", "dev", "vx0", "valid_lft", "300", "preferred_lft", "300")
    ns.ip("addr", "add", "10.79.0.5/24", "dev", "vx0")  # static, not configured: removed
    first, second, third = _net("10.77.0.11/24"), _net("10.77.0.12/24"), _net(
        "10.77.0.12/24", gateway=None)
    root = str(tmp_path)

    results = drive(ns, ["apply", None, first, root], ["apply", first, first, root])
    assert "add address 10.77.0.11/24 on vx0" in results[0]["ok"]
    assert "remove address 10.79.0.5/24 on vx0" in results[0]["ok"]
    assert results[1] == {"ok": []}
    assert set(inet(ns, "vx0")) == {"10.77.0.11/24", "10.78.0.5/24"}
    assert link(ns, "vx0")["mtu"] == 1400
    assert default_gateways(ns) == ["10.77.0.1"]
    # the failover code raises the node IP: a secondary of the configured address
    ns.ip("addr", "add", "10.77.0.100/24", "dev", "vx0", "label", "vx0:vip")

    # The new address shares the old primary's subnet: the kernel (promote_secondaries is
    # off in a new namespace) drops it and the :vip with the primary; apply puts them back.
    results = drive(ns, ["apply", first, second, root], ["apply", second, second, root])
    assert "restore address 10.77.0.100/24 on vx0 (the kernel dropped it with a removed " \
        "primary address)" in results[0]["ok"]
    assert results[1] == {"ok": []}
    addrs = inet(ns, "vx0")
    assert set(addrs) == {"10.77.0.12/24", "10.77.0.100/24", "10.78.0.5/24"}
    assert addrs["10.77.0.100/24"]["label"] == "vx0:vip"
    assert addrs["10.78.0.5/24"]["valid_life_time"] <= 300  # still the dynamic one
    assert default_gateways(ns) == ["10.77.0.1"]

    results = drive(ns, ["apply", second, third, root])
    assert "remove default route via 10.77.0.1" in results[0]["ok"]
    assert default_gateways(ns) == []
    keyfile = tmp_path / "etc/NetworkManager/system-connections/voxnode-vx0.nmconnection"
    assert "address1=10.77.0.12/24" in keyfile.read_text()
