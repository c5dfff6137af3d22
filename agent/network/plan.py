"""The network subsystem's plan: what a change of ``network`` will do, as sentences. Pure.

Warnings name the sessions a change can drop, so the operator can ask for an automatic
rollback (``--confirm-within``) before locking themselves out.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.network.render import FALLBACK_POOL
from agent.state.model import InterfaceConfig, NetworkConfig
from agent.subsystems.base import SubsystemPlan

_ROLLBACK_HINT = "consider --confirm-within so a lock-out rolls back"


def _items(values: Sequence[object]) -> str:
    return ", ".join(str(v) for v in values) or "none"


def _ntp(values: Sequence[str]) -> str:
    return _items(values) if values else f"none (pool {FALLBACK_POOL})"


def _interface_steps(
    ifname: str, iface: InterfaceConfig, prev: InterfaceConfig | None
) -> tuple[list[str], list[str]]:
    steps: list[str] = []
    warnings: list[str] = []
    if prev is None:
        steps.append(f"{ifname}: configure")
    prev_mtu = prev.mtu if prev else None
    if iface.mtu != prev_mtu:
        if iface.mtu is None:
            steps.append(f"{ifname}: mtu no longer set (stays {prev_mtu} until reboot)")
        elif prev_mtu is None:
            steps.append(f"{ifname}: mtu {iface.mtu}")
        else:
            steps.append(f"{ifname}: mtu {prev_mtu} → {iface.mtu}")
    if iface.dhcp != (prev.dhcp if prev else False):
        steps.append(f"{ifname}: DHCP {'on' if iface.dhcp else 'off'}")
    prev_addrs = prev.addresses if prev else []
    steps += [f"{ifname}: add {addr}" for addr in iface.addresses if addr not in prev_addrs]
    for addr in prev_addrs:
        if addr not in iface.addresses:
            steps.append(f"{ifname}: remove {addr}")
            warnings.append(f"sessions to {addr.ip} will drop; {_ROLLBACK_HINT}")
    return steps, warnings


def _gateway_steps(old: NetworkConfig | None, new: NetworkConfig) -> tuple[list[str], list[str]]:
    before = old.gateway if old else None
    after = new.gateway
    if before == after:
        return [], []
    if after is None:
        return [f"remove default route via {before}"], [
            f"without a default route only the node's own subnets reach it; {_ROLLBACK_HINT}"
        ]
    if before is None:
        return [f"default route via {after}"], []
    return [f"default route via {after} (was {before})"], [
        f"sessions from other networks through {before} will drop; {_ROLLBACK_HINT}"
    ]


def _settings_steps(old: NetworkConfig | None, new: NetworkConfig) -> list[str]:
    steps: list[str] = []
    if old is None:
        steps.append(f"hostname {new.hostname}")
        if new.domain:
            steps.append(f"domain {new.domain}")
        steps.append(f"DNS servers {_items(new.dns)}")
        if new.search:
            steps.append(f"search domains {_items(new.search)}")
        steps.append(f"NTP servers {_ntp(new.ntp)}")
        return steps
    if old.hostname != new.hostname:
        steps.append(f"hostname {old.hostname} → {new.hostname}")
    if old.domain != new.domain:
        steps.append(f"domain {old.domain or 'none'} → {new.domain or 'none'}")
    if old.dns != new.dns:
        steps.append(f"DNS servers {_items(old.dns)} → {_items(new.dns)}")
    if old.search != new.search:
        steps.append(f"search domains {_items(old.search)} → {_items(new.search)}")
    if old.ntp != new.ntp:
        steps.append(f"NTP servers {_ntp(old.ntp)} → {_ntp(new.ntp)}")
    return steps


def plan_network(old: NetworkConfig | None, new: NetworkConfig) -> SubsystemPlan:
    """Describe going from ``old`` (None: first start, plan everything) to ``new``."""
    steps: list[str] = []
    warnings: list[str] = []
    old_ifs = old.interfaces if old else {}
    for ifname, iface in new.interfaces.items():
        more, warn = _interface_steps(ifname, iface, old_ifs.get(ifname))
        steps += more
        warnings += warn
    for ifname, prev in old_ifs.items():
        if ifname in new.interfaces:
            continue
        for addr in prev.addresses:
            steps.append(f"{ifname}: remove {addr}")
            warnings.append(f"sessions to {addr.ip} will drop; {_ROLLBACK_HINT}")
        steps.append(f"{ifname}: no longer configured (its keyfile is deleted)")
    more, warn = _gateway_steps(old, new)
    steps += more
    warnings += warn
    steps += _settings_steps(old, new)
    if not new.dns and (old is None or old.dns):
        warnings.append("with no DNS servers the node cannot resolve names (licence server, "
                        "NTP pool, mail)")
    return SubsystemPlan("network", steps=tuple(steps), warnings=tuple(warnings))
