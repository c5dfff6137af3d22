"""Render the files that persist the network configuration on AlmaLinux 8. Pure: no I/O.

Owns the NetworkManager keyfile of every configured interface (``voxnode-<if>``), the
NetworkManager drop-in that leaves DNS and the host name to voxnode, ``/etc/hostname``,
``/etc/resolv.conf`` and ``/etc/chrony.conf``. The agent sets the running kernel state
itself; these files make the same configuration come back after a reboot.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from agent.state.model import InterfaceConfig, NetworkConfig

KEYFILE_DIR = "/etc/NetworkManager/system-connections"
KEYFILE_PREFIX = "voxnode-"
KEYFILE_SUFFIX = ".nmconnection"
NM_CONF = "/etc/NetworkManager/conf.d/90-voxnode.conf"
HOSTNAME = "/etc/hostname"
RESOLV_CONF = "/etc/resolv.conf"
CHRONY_CONF = "/etc/chrony.conf"
FALLBACK_POOL = "2.almalinux.pool.ntp.org"

# Fixed namespace: the same interface name always gives the same connection uuid, so a
# re-render never makes NetworkManager see a new connection.
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "network.voxnode")


@dataclass(frozen=True)
class RenderedFile:
    path: str  # absolute node path
    content: str
    mode: int = 0o644


def keyfile_path(ifname: str) -> str:
    return f"{KEYFILE_DIR}/{KEYFILE_PREFIX}{ifname}{KEYFILE_SUFFIX}"


def connection_uuid(ifname: str) -> uuid.UUID:
    return uuid.uuid5(_UUID_NAMESPACE, ifname)


def search_domains(net: NetworkConfig) -> list[str]:
    # /etc/hostname holds the short name, so without a search line the resolver would not
    # know the node's domain: fall back to it.
    if net.search:
        return list(net.search)
    return [net.domain] if net.domain else []


def _gateway_ifname(net: NetworkConfig) -> str | None:
    """The interface whose static subnet holds the gateway (validation allows one)."""
    if net.gateway is None:
        return None
    for ifname, iface in net.interfaces.items():
        if any(net.gateway in addr.network for addr in iface.addresses):
            return ifname
    return None


def _method(iface: InterfaceConfig, family: int) -> str:
    has_static = any(addr.version == family for addr in iface.addresses)
    if iface.dhcp:
        return "auto"  # DHCP (IPv4) / SLAAC+DHCPv6 (IPv6), plus any static addresses
    if has_static:
        return "manual"
    # No IPv4 at all: NM must not try. IPv6 without configuration is left to the kernel
    # (link-local), which is exactly what the agent does at runtime.
    return "disabled" if family == 4 else "ignore"


def _dns_holder(net: NetworkConfig, family: int) -> str | None:
    """Where NM keyfiles record the DNS servers of ``family``: the gateway's interface if
    the gateway is of that family, else the first interface whose method allows DNS."""
    gw_if = _gateway_ifname(net)
    order = list(net.interfaces)
    if gw_if is not None and net.gateway is not None and net.gateway.version == family:
        order.insert(0, gw_if)
    for ifname in order:
        if _method(net.interfaces[ifname], family) in ("manual", "auto"):
            return ifname
    return None


def _nm_list(values: list[str]) -> str:
    return "".join(f"{v};" for v in values)  # NM keyfile lists end every item with ';'


def _ip_section(net: NetworkConfig, ifname: str, family: int) -> list[str]:
    iface = net.interfaces[ifname]
    lines = [f"[ipv{family}]", f"method={_method(iface, family)}"]
    statics = [addr for addr in iface.addresses if addr.version == family]
    lines += [f"address{i}={addr}" for i, addr in enumerate(statics, start=1)]
    gw = net.gateway
    if gw is not None and gw.version == family and _gateway_ifname(net) == ifname:
        lines.append(f"gateway={gw}")
    if _dns_holder(net, family) == ifname:
        servers = [str(ip) for ip in net.dns if ip.version == family]
        if servers:
            lines.append(f"dns={_nm_list(servers)}")
        primary = gw.version if gw is not None else (4 if _dns_holder(net, 4) else 6)
        if family == primary and search_domains(net):
            lines.append(f"dns-search={_nm_list(search_domains(net))}")
    return lines


def render_keyfile(net: NetworkConfig, ifname: str) -> str:
    iface = net.interfaces[ifname]
    lines = [
        f"# Written by voxnode from network.interfaces.{ifname}; edits here are overwritten.",
        "[connection]",
        f"id={KEYFILE_PREFIX}{ifname}",
        f"uuid={connection_uuid(ifname)}",
        "type=ethernet",
        f"interface-name={ifname}",
        "autoconnect=true",
        "",
        "[ethernet]",
    ]
    if iface.mtu is not None:
        lines.append(f"mtu={iface.mtu}")
    lines += ["", *_ip_section(net, ifname, 4), "", *_ip_section(net, ifname, 6)]
    return "\n".join(lines) + "\n"


def dns_from_dhcp(net: NetworkConfig) -> bool:
    """No DNS servers configured but an interface uses DHCP: take the DHCP server's."""
    return not net.dns and any(iface.dhcp for iface in net.interfaces.values())


def render_nm_conf(net: NetworkConfig) -> str:
    if dns_from_dhcp(net):
        return (
            "# Written by voxnode. network.dns is empty and DHCP is on, so NetworkManager\n"
            "# writes /etc/resolv.conf from the DHCP lease. The agent owns the host name and\n"
            "# configures every interface through voxnode-<if> connections: NetworkManager\n"
            "# must not change the host name nor invent DHCP connections of its own.\n"
            "[main]\n"
            "hostname-mode=none\n"
            "no-auto-default=*\n"
        )
    return (
        "# Written by voxnode. The agent owns /etc/resolv.conf and the host name, and\n"
        "# configures every interface through voxnode-<if> connections: NetworkManager\n"
        "# must not change the first two nor invent DHCP connections of its own.\n"
        "[main]\n"
        "dns=none\n"
        "hostname-mode=none\n"
        "no-auto-default=*\n"
    )


def render_hostname(net: NetworkConfig) -> str:
    return f"{net.hostname}\n"


def render_resolv_conf(net: NetworkConfig) -> str:
    lines = [
        "# Managed by voxnode; edits here are overwritten.",
        "# To change it, set network.dns and network.search in the node configuration",
        "# (voxnode CLI or web console).",
    ]
    if search_domains(net):
        lines.append(f"search {' '.join(search_domains(net))}")
    if not net.dns:
        lines.append("# network.dns is empty: this node has no DNS servers.")
    lines += [f"nameserver {ip}" for ip in net.dns]
    return "\n".join(lines) + "\n"


def render_chrony_conf(net: NetworkConfig) -> str:
    lines = [
        "# Managed by voxnode; edits here are overwritten.",
        "# To change the time servers, set network.ntp in the node configuration.",
    ]
    if net.ntp:
        lines += [f"server {server} iburst" for server in net.ntp]
    else:
        lines += [
            "# network.ntp is empty: using the AlmaLinux public pool.",
            f"pool {FALLBACK_POOL} iburst",
        ]
    lines += [
        "",
        "# Record the rate at which the system clock gains/losses time.",
        "driftfile /var/lib/chrony/drift",
        "",
        "# Allow the system clock to be stepped in the first three updates",
        "# if its offset is larger than 1 second.",
        "makestep 1.0 3",
        "",
        "# Enable kernel synchronization of the real-time clock (RTC).",
        "rtcsync",
        "",
        "# Specify file containing keys for NTP authentication.",
        "keyfile /etc/chrony.keys",
        "",
        "# Get TAI-UTC offset and leap seconds from the system tz database.",
        "leapsectz right/UTC",
        "",
        "# Specify directory for log files.",
        "logdir /var/log/chrony",
    ]
    return "\n".join(lines) + "\n"


def render_all(net: NetworkConfig) -> list[RenderedFile]:
    """Every file of the network configuration, keyfiles (mode 0600: NM's rule) first."""
    files = [
        RenderedFile(keyfile_path(ifname), render_keyfile(net, ifname), 0o600)
        for ifname in net.interfaces
    ]
    files += [
        RenderedFile(NM_CONF, render_nm_conf(net)),
        RenderedFile(HOSTNAME, render_hostname(net)),
    ]
    if not dns_from_dhcp(net):
        files.append(RenderedFile(RESOLV_CONF, render_resolv_conf(net)))
    files.append(RenderedFile(CHRONY_CONF, render_chrony_conf(net)))
    return files
