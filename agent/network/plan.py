"""The network subsystem's plan: what a change of ``network`` will do. Pure.

It needs nothing from the machine: the two documents say it all. Warnings name the sessions
a change can drop, so the operator can ask for an automatic rollback (``--confirm-within``)
before locking themselves out. List-valued params are comma-separated ("" for none).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from agent.network.render import FALLBACK_POOL
from agent.state.model import InterfaceConfig, NetworkConfig
from agent.subsystems.base import PlanItem, SubsystemPlan, item, joined

_ROLLBACK_HINT = "consider --confirm-within so a lock-out rolls back"


class NetworkCode(StrEnum):
    INTERFACE_CONFIGURE = "interface-configure"
    INTERFACE_MTU_SET = "interface-mtu-set"
    INTERFACE_MTU_CHANGE = "interface-mtu-change"
    INTERFACE_MTU_UNSET = "interface-mtu-unset"
    INTERFACE_DHCP = "interface-dhcp"
    ADDRESS_ADD = "address-add"
    ADDRESS_REMOVE = "address-remove"
    INTERFACE_DECONFIGURE = "interface-deconfigure"
    DEFAULT_ROUTE_SET = "default-route-set"
    DEFAULT_ROUTE_CHANGE = "default-route-change"
    DEFAULT_ROUTE_REMOVE = "default-route-remove"
    HOSTNAME_SET = "hostname-set"
    HOSTNAME_CHANGE = "hostname-change"
    DOMAIN_SET = "domain-set"
    DOMAIN_CHANGE = "domain-change"
    DNS_SET = "dns-set"
    DNS_CHANGE = "dns-change"
    SEARCH_SET = "search-set"
    SEARCH_CHANGE = "search-change"
    NTP_SET = "ntp-set"
    NTP_CHANGE = "ntp-change"
    # warnings
    SESSIONS_DROP_ADDRESS = "sessions-drop-address"
    SESSIONS_DROP_GATEWAY = "sessions-drop-gateway"
    NO_DEFAULT_ROUTE = "no-default-route"
    NO_DNS = "no-dns"


C = NetworkCode


def _items(values: Sequence[object]) -> str:
    return ", ".join(str(v) for v in values) or "none"


def _ntp(values: Sequence[str]) -> str:
    return _items(values) if values else f"none (pool {FALLBACK_POOL})"


def _removed(ifname: str, address: object, ip: object) -> tuple[PlanItem, PlanItem]:
    return (item(C.ADDRESS_REMOVE, f"{ifname}: remove {address}", interface=ifname,
                 address=str(address)),
            item(C.SESSIONS_DROP_ADDRESS, f"sessions to {ip} will drop; {_ROLLBACK_HINT}",
                 address=str(ip)))


def _interface_steps(
    ifname: str, iface: InterfaceConfig, prev: InterfaceConfig | None
) -> tuple[list[PlanItem], list[PlanItem]]:
    steps: list[PlanItem] = []
    warnings: list[PlanItem] = []
    if prev is None:
        steps.append(item(C.INTERFACE_CONFIGURE, f"{ifname}: configure", interface=ifname))
    prev_mtu = prev.mtu if prev else None
    if iface.mtu != prev_mtu:
        if iface.mtu is None:
            steps.append(item(C.INTERFACE_MTU_UNSET,
                              f"{ifname}: mtu no longer set (stays {prev_mtu} until reboot)",
                              interface=ifname, old=prev_mtu))
        elif prev_mtu is None:
            steps.append(item(C.INTERFACE_MTU_SET, f"{ifname}: mtu {iface.mtu}",
                              interface=ifname, new=iface.mtu))
        else:
            steps.append(item(C.INTERFACE_MTU_CHANGE, f"{ifname}: mtu {prev_mtu} → {iface.mtu}",
                              interface=ifname, old=prev_mtu, new=iface.mtu))
    if iface.dhcp != (prev.dhcp if prev else False):
        steps.append(item(C.INTERFACE_DHCP, f"{ifname}: DHCP {'on' if iface.dhcp else 'off'}",
                          interface=ifname, enabled=iface.dhcp))
    prev_addrs = prev.addresses if prev else []
    steps += [item(C.ADDRESS_ADD, f"{ifname}: add {addr}", interface=ifname, address=str(addr))
              for addr in iface.addresses if addr not in prev_addrs]
    for addr in prev_addrs:
        if addr not in iface.addresses:
            step, warning = _removed(ifname, addr, addr.ip)
            steps.append(step)
            warnings.append(warning)
    return steps, warnings


def _gateway_steps(
    old: NetworkConfig | None, new: NetworkConfig
) -> tuple[list[PlanItem], list[PlanItem]]:
    before = old.gateway if old else None
    after = new.gateway
    if before == after:
        return [], []
    if after is None:
        return [item(C.DEFAULT_ROUTE_REMOVE, f"remove default route via {before}",
                     old=str(before))], [
            item(C.NO_DEFAULT_ROUTE, "without a default route only the node's own subnets "
                 f"reach it; {_ROLLBACK_HINT}")
        ]
    if before is None:
        return [item(C.DEFAULT_ROUTE_SET, f"default route via {after}", new=str(after))], []
    return [item(C.DEFAULT_ROUTE_CHANGE, f"default route via {after} (was {before})",
                 old=str(before), new=str(after))], [
        item(C.SESSIONS_DROP_GATEWAY, f"sessions from other networks through {before} will "
             f"drop; {_ROLLBACK_HINT}", gateway=str(before))
    ]


def _first_settings(new: NetworkConfig) -> list[PlanItem]:
    steps = [item(C.HOSTNAME_SET, f"hostname {new.hostname}", new=new.hostname)]
    if new.domain:
        steps.append(item(C.DOMAIN_SET, f"domain {new.domain}", new=new.domain))
    steps.append(item(C.DNS_SET, f"DNS servers {_items(new.dns)}", new=joined(new.dns)))
    if new.search:
        steps.append(item(C.SEARCH_SET, f"search domains {_items(new.search)}",
                          new=joined(new.search)))
    steps.append(item(C.NTP_SET, f"NTP servers {_ntp(new.ntp)}", new=joined(new.ntp),
                      fallback_pool=FALLBACK_POOL))
    return steps


def _settings_steps(old: NetworkConfig | None, new: NetworkConfig) -> list[PlanItem]:
    if old is None:
        return _first_settings(new)
    steps: list[PlanItem] = []
    if old.hostname != new.hostname:
        steps.append(item(C.HOSTNAME_CHANGE, f"hostname {old.hostname} → {new.hostname}",
                          old=old.hostname, new=new.hostname))
    if old.domain != new.domain:
        steps.append(item(C.DOMAIN_CHANGE,
                          f"domain {old.domain or 'none'} → {new.domain or 'none'}",
                          old=old.domain, new=new.domain))
    if old.dns != new.dns:
        steps.append(item(C.DNS_CHANGE, f"DNS servers {_items(old.dns)} → {_items(new.dns)}",
                          old=joined(old.dns), new=joined(new.dns)))
    if old.search != new.search:
        steps.append(item(C.SEARCH_CHANGE,
                          f"search domains {_items(old.search)} → {_items(new.search)}",
                          old=joined(old.search), new=joined(new.search)))
    if old.ntp != new.ntp:
        steps.append(item(C.NTP_CHANGE, f"NTP servers {_ntp(old.ntp)} → {_ntp(new.ntp)}",
                          old=joined(old.ntp), new=joined(new.ntp), fallback_pool=FALLBACK_POOL))
    return steps


def plan_network(old: NetworkConfig | None, new: NetworkConfig) -> SubsystemPlan:
    """Describe going from ``old`` (None: first start, plan everything) to ``new``."""
    steps: list[PlanItem] = []
    warnings: list[PlanItem] = []
    old_ifs = old.interfaces if old else {}
    for ifname, iface in new.interfaces.items():
        more, warn = _interface_steps(ifname, iface, old_ifs.get(ifname))
        steps += more
        warnings += warn
    for ifname, prev in old_ifs.items():
        if ifname in new.interfaces:
            continue
        for addr in prev.addresses:
            step, warning = _removed(ifname, addr, addr.ip)
            steps.append(step)
            warnings.append(warning)
        steps.append(item(C.INTERFACE_DECONFIGURE,
                          f"{ifname}: no longer configured (its keyfile is deleted)",
                          interface=ifname))
    more, warn = _gateway_steps(old, new)
    steps += more
    warnings += warn
    steps += _settings_steps(old, new)
    if not new.dns and (old is None or old.dns):
        warnings.append(item(C.NO_DNS, "with no DNS servers the node cannot resolve names "
                             "(licence server, NTP pool, mail)"))
    return SubsystemPlan("network", steps=tuple(steps), warnings=tuple(warnings))
