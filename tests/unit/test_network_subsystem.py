"""The network subsystem against the in-memory kernel (MemoryNetlink) and a temp file tree."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.errors import SubsystemError
from agent.network.subsystem import NetworkSubsystem
from agent.ports.files import FileTree
from agent.ports.hostname import MemoryHostname
from agent.ports.netlink import (
    AddressExists,
    AddressMissing,
    GatewayUnreachable,
    InterfaceMissing,
    MtuRefused,
)
from agent.ports.netlink_memory import MemoryNetlink
from agent.state.document import validate_document
from agent.state.model import DesiredState
from agent.subsystems.base import Change

KEYFILES = "/etc/NetworkManager/system-connections"


def state(**network: Any) -> DesiredState:
    doc = {"hostname": "pbx1", "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}}}
    doc.update(network)
    return validate_document({"schema_version": 1, "network": doc})


BASE = state(gateway="10.0.0.1", dns=["10.0.0.2"], ntp=["10.0.0.5"])


class Node:
    """A fake kernel with eth0 (and optionally eth1), a temp root and a fake hostname."""

    def __init__(self, root: Path, *interfaces: str) -> None:
        self.kernel = MemoryNetlink()
        for ifname in interfaces or ("eth0",):
            self.kernel.add_link(ifname)
        self.files = FileTree(root)
        self.hostname = MemoryHostname("localhost")
        self.subsystem = NetworkSubsystem(self.kernel, self.files, self.hostname)

    async def addresses(self, ifname: str) -> dict[str, str | None]:
        """Global addresses on ``ifname`` → label."""
        link = next(link for link in await self.kernel.links() if link.name == ifname)
        return {str(a.interface): a.label for a in link.addresses if a.scope == "global"}

    async def gateways(self, family: int = 4) -> list[str]:
        return [str(r.gateway) for r in await self.kernel.default_routes(family)]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


# --- apply --------------------------------------------------------------------------------


async def test_first_apply_converges_and_second_apply_changes_nothing(node: Node) -> None:
    changes = await node.subsystem.apply(None, BASE)
    assert Change("up", "link eth0") in changes
    assert Change("add", "address 10.0.0.11/24 on eth0") in changes
    assert Change("set", "default route", "via 10.0.0.1") in changes
    assert Change("set", "hostname", "localhost → pbx1") in changes
    assert Change("write", f"{KEYFILES}/voxnode-eth0.nmconnection") in changes
    assert await node.addresses("eth0") == {"10.0.0.11/24": "eth0"}
    assert await node.gateways() == ["10.0.0.1"]
    assert node.hostname.name == "pbx1"
    keyfile = node.files.path(f"{KEYFILES}/voxnode-eth0.nmconnection")
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert node.files.read("/etc/hostname") == b"pbx1\n"
    assert await node.subsystem.apply(None, BASE) == []
    assert await node.subsystem.apply(BASE, BASE) == []


async def test_address_change_keeps_vip_and_dynamic_and_removes_foreign(node: Node) -> None:
    await node.subsystem.apply(None, BASE)
    node.kernel.put_address("eth0", "10.0.0.100/24", label="eth0:vip")
    # a DHCP lease (another subnet: a lease in the removed primary's subnet would be dropped
    # by the kernel with it, and re-adding it here would make it static)
    node.kernel.put_address("eth0", "10.2.0.50/24", permanent=False)
    node.kernel.put_address("eth0", "10.9.9.9/24", label="eth0:old")  # left by the installer
    new = state(interfaces={"eth0": {"addresses": ["10.0.0.12/24"]}},
                gateway="10.0.0.1", dns=["10.0.0.2"], ntp=["10.0.0.5"])

    changes = await node.subsystem.apply(BASE, new)

    assert await node.addresses("eth0") == {
        "10.0.0.12/24": "eth0", "10.0.0.100/24": "eth0:vip", "10.2.0.50/24": "eth0",
    }
    assert Change("add", "address 10.0.0.12/24 on eth0") in changes
    assert Change("remove", "address 10.0.0.11/24 on eth0") in changes
    assert Change("remove", "address 10.9.9.9/24 on eth0") in changes
    assert not [c for c in changes if "10.2.0.50" in c.target]
    # removing the subnet's primary dropped the route and the secondaries: all back
    assert await node.gateways() == ["10.0.0.1"]
    assert await node.subsystem.apply(new, new) == []


async def test_removing_a_primary_restores_what_the_kernel_dropped(node: Node) -> None:
    await node.subsystem.apply(None, BASE)
    node.kernel.put_address("eth0", "10.0.0.100/24", label="eth0:vip")
    new = state(interfaces={"eth0": {"addresses": ["10.0.0.12/24"]}}, gateway="10.0.0.1")
    changes = await node.subsystem.apply(BASE, new)
    restored = {c.target for c in changes if c.action == "restore"}
    assert restored == {"address 10.0.0.12/24 on eth0", "address 10.0.0.100/24 on eth0"}
    assert Change("set", "default route", "via 10.0.0.1") in changes


async def test_missing_interface_fails_before_touching_anything(node: Node) -> None:
    bad = state(interfaces={"eth9": {"addresses": ["10.0.0.11/24"]}})
    with pytest.raises(SubsystemError) as info:
        await node.subsystem.apply(None, bad)
    assert info.value.message == "interface eth9 does not exist on this node (present: eth0, lo)"
    assert not node.files.exists("/etc/hostname")
    assert await node.addresses("eth0") == {}


async def test_several_missing_interfaces_are_named_together(node: Node) -> None:
    bad = state(interfaces={"eth8": {"dhcp": True}, "eth0": {"dhcp": True},
                            "eth9": {"dhcp": True}})
    with pytest.raises(SubsystemError) as info:
        await node.subsystem.apply(None, bad)
    assert info.value.message == (
        "interfaces eth8, eth9 do not exist on this node (present: eth0, lo)"
    )


async def test_deconfigured_interface_loses_keyfile_and_old_addresses(tmp_path: Path) -> None:
    node = Node(tmp_path, "eth0", "eth1")
    old = state(interfaces={"eth0": {"addresses": ["10.0.0.11/24"]},
                            "eth1": {"addresses": ["10.1.0.11/24"]}})
    await node.subsystem.apply(None, old)
    node.kernel.put_address("eth1", "10.1.0.99/24")  # not ours: stays
    foreign = node.files.path(f"{KEYFILES}/other.nmconnection")
    foreign.write_text("[connection]\n")
    new = state()

    changes = await node.subsystem.apply(old, new)

    assert Change("delete", f"{KEYFILES}/voxnode-eth1.nmconnection",
                  "interface no longer configured") in changes
    assert not node.files.exists(f"{KEYFILES}/voxnode-eth1.nmconnection")
    assert node.files.exists(f"{KEYFILES}/voxnode-eth0.nmconnection")
    assert foreign.exists()
    assert await node.addresses("eth1") == {"10.1.0.99/24": "eth1"}
    assert await node.subsystem.apply(new, new) == []


async def test_gateway_removal_deletes_the_route(node: Node) -> None:
    await node.subsystem.apply(None, BASE)
    node.kernel.put_route("10.0.0.1", metric=100)  # NetworkManager's copy at boot
    new = state(dns=["10.0.0.2"], ntp=["10.0.0.5"])
    changes = await node.subsystem.apply(BASE, new)
    assert Change("remove", "default route via 10.0.0.1") in changes
    assert await node.gateways() == []
    assert await node.subsystem.apply(new, new) == []


async def test_gateway_change_replaces_the_route(node: Node) -> None:
    old = state(gateway="10.0.0.254")
    await node.subsystem.apply(None, old)
    new = state(gateway="10.0.0.1")
    changes = await node.subsystem.apply(old, new)
    assert Change("set", "default route", "via 10.0.0.1, was 10.0.0.254") in changes
    assert await node.gateways() == ["10.0.0.1"]


async def test_ipv6_address_and_gateway(node: Node) -> None:
    node.kernel.put_address("eth0", "2001:db8::99/64")  # unknown IPv6: may be the failover's
    v6 = state(interfaces={"eth0": {"addresses": ["10.0.0.11/24", "2001:db8::11/64"]}},
               gateway="2001:db8::1")
    await node.subsystem.apply(None, v6)
    assert await node.gateways(6) == ["2001:db8::1"]
    assert await node.addresses("eth0") == {
        "10.0.0.11/24": "eth0", "2001:db8::11/64": None, "2001:db8::99/64": None,
    }
    # same IPv6 address with another prefix: the kernel refuses both at once (EEXIST)
    wider = state(interfaces={"eth0": {"addresses": ["10.0.0.11/24", "2001:db8::11/48"]}})
    changes = await node.subsystem.apply(v6, wider)
    assert Change("remove", "address 2001:db8::11/64 on eth0",
                  "replaced by another prefix length") in changes
    assert "2001:db8::11/48" in await node.addresses("eth0")
    assert "2001:db8::11/64" not in await node.addresses("eth0")


async def test_mtu_is_set_and_refusals_are_operator_sentences(node: Node) -> None:
    await node.subsystem.apply(None, state(interfaces={"eth0": {"dhcp": True, "mtu": 9000}}))
    assert (await node.kernel.links())[1].mtu == 9000
    node.kernel.add_link("eth1", max_mtu=1500)
    with pytest.raises(MtuRefused) as info:
        await node.subsystem.apply(None, state(interfaces={
            "eth0": {"addresses": ["10.0.0.11/24"]}, "eth1": {"dhcp": True, "mtu": 9000}}))
    assert info.value.message == (
        "eth1 does not accept mtu 9000 (outside what its driver supports)"
    )


async def test_no_hostname_port_leaves_the_kernel_name_alone(tmp_path: Path) -> None:
    kernel = MemoryNetlink()
    kernel.add_link("eth0")
    subsystem = NetworkSubsystem(kernel, FileTree(tmp_path), None)
    changes = await subsystem.apply(None, BASE)
    assert not [c for c in changes if c.target == "hostname"]
    assert FileTree(tmp_path).read("/etc/hostname") == b"pbx1\n"


async def test_check_has_nothing_to_object(node: Node) -> None:
    assert await node.subsystem.check(state(interfaces={"eth9": {"dhcp": True}})) == []


# --- kernel view ---------------------------------------------------------------------------


async def test_kernel_view_reports_drift(node: Node) -> None:
    want = state(interfaces={"eth0": {"addresses": ["10.0.0.11/24"], "mtu": 9000},
                             "eth9": {"dhcp": True}}, gateway="10.0.0.1")
    node.kernel.put_address("eth0", "10.0.0.77/24")
    node.kernel.put_address("eth0", "10.0.0.100/24", label="eth0:vip")
    seen = await node.subsystem.kernel_view(want)
    assert seen["drift"] == [
        "eth0: link is down",
        "eth0: mtu is 1500, configured 9000",
        "eth0: desired address 10.0.0.11/24 is missing",
        "eth0: unexpected address 10.0.0.77/24",
        "eth9: interface does not exist on this node",
        "default route via 10.0.0.1 is missing",
    ]
    assert seen["interfaces"]["eth0"]["addresses"] == [
        "10.0.0.77/24 (static)", "10.0.0.100/24 (failover)",
    ]
    assert seen["interfaces"]["eth9"] == {"state": "missing"}


async def test_kernel_view_after_apply_shows_no_drift(node: Node) -> None:
    await node.subsystem.apply(None, BASE)
    seen = await node.subsystem.kernel_view(BASE)
    assert seen["drift"] == []
    assert seen["default_routes"] == [
        {"family": 4, "gateway": "10.0.0.1", "interface": "eth0", "metric": 0}
    ]
    assert seen["interfaces"]["eth0"]["state"] == "up"


# --- the fake keeps the kernel's refusals -------------------------------------------------


async def test_fake_kernel_refusals() -> None:
    kernel = MemoryNetlink()
    kernel.add_link("eth0", up=True)
    addr = ipaddress.ip_interface("10.0.0.11/24")
    await kernel.add_address("eth0", addr, "eth0")
    with pytest.raises(AddressExists):
        await kernel.add_address("eth0", addr, "eth0")
    # IPv4 allows the same address with another prefix; IPv6 does not
    await kernel.add_address("eth0", ipaddress.ip_interface("10.0.0.11/16"), "eth0")
    await kernel.add_address("eth0", ipaddress.ip_interface("2001:db8::1/64"), None)
    with pytest.raises(AddressExists):
        await kernel.add_address("eth0", ipaddress.ip_interface("2001:db8::1/48"), None)
    with pytest.raises(AddressMissing):
        await kernel.delete_address("eth0", ipaddress.ip_interface("10.0.0.99/24"))
    with pytest.raises(InterfaceMissing) as missing:
        await kernel.set_link_up("eth9")
    assert missing.value.errno == 19  # ENODEV, as the kernel answers
    with pytest.raises(GatewayUnreachable):
        await kernel.replace_default_route(ipaddress.ip_address("10.5.0.1"))
