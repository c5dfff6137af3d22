"""The ``ha`` section of the document: its rules against the network, and the settings the
failover runtime actually runs with.

``check_ha_rules`` is called by document validation (``agent.state.document``) so that a
bad pair setting is refused with ``path: what is wrong`` like any other. ``PairConfig`` is
what the runtime derives from a document: only these inputs (addresses, interfaces,
profile, witnesses, arbiter) matter to it, so a change elsewhere in the document (a DNS
server, NTP, the search domains) changes nothing in the pair, and a change of these is
applied in place (``ha.runtime.Runtime.reconfigure``) without giving up the role.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from agent.errors import Problem
from agent.state.model import DesiredState, HAProfile, SharedIP, WorkingMode
from ha.machine import TIMINGS, Timing

IP = IPv4Address | IPv6Address


@dataclass(frozen=True)
class PairConfig:
    """The failover runtime's own inputs, derived from one document."""

    node_id: str  # this node's management address, as text: the heartbeats' sender id
    mgmt_ip: IP
    mgmt_if: str
    peer_ip: IP
    port: int
    profile: HAProfile
    shared_ips: tuple[SharedIP, ...]
    witnesses: tuple[IPv4Address, ...]  # probed with ARP (IPv4 only)
    cloud: bool
    arbiter: tuple[IP, int] | None

    @property
    def timing(self) -> Timing:
        return TIMINGS[self.profile]

    @property
    def interfaces(self) -> tuple[str, ...]:
        """Interfaces that need an ARP endpoint: the management one and the node IPs'."""
        return tuple(sorted({s.interface for s in self.shared_ips} | {self.mgmt_if}))

    @classmethod
    def from_state(cls, state: DesiredState) -> PairConfig:
        """For a validated document with ha.enabled (the rules guarantee the fields)."""
        ha = state.ha
        mgmt = ha_management_ip(state)
        if mgmt is None or ha.peer is None:
            raise ValueError("ha.enabled without a peer on a local subnet (not validated?)")
        mgmt_if = next(name for name, iface in state.network.interfaces.items()
                       if any(a.ip == mgmt for a in iface.addresses))
        return cls(
            node_id=str(mgmt), mgmt_ip=mgmt, mgmt_if=mgmt_if, peer_ip=ha.peer,
            port=ha.heartbeat_port, profile=ha.profile, shared_ips=tuple(ha.shared_ips),
            witnesses=tuple(w for w in ha_witnesses(state) if isinstance(w, IPv4Address)),
            cloud=ha.cloud,
            arbiter=(ha.arbiter.address, ha.arbiter.port) if ha.arbiter is not None else None,
        )


def ha_witnesses(state: DesiredState) -> list[IP]:
    """The witnesses in force: the configured list, or the gateway."""
    if state.ha.witnesses:
        return list(state.ha.witnesses)
    return [state.network.gateway] if state.network.gateway else []


def ha_management_ip(state: DesiredState) -> IP | None:
    """This node's heartbeat address: configured, or our address on the peer's subnet."""
    if state.ha.management_ip is not None:
        return state.ha.management_ip
    peer = state.ha.peer
    for iface in state.network.interfaces.values():
        for addr in iface.addresses:
            if peer is not None and peer in addr.network:
                return addr.ip
    return None


def check_ha_rules(state: DesiredState) -> list[Problem]:
    """The pair's settings against this node's network (only when ha.enabled)."""
    ha, net = state.ha, state.network
    if not ha.enabled:
        return []
    problems: list[Problem] = []
    own = {
        addr.ip: (ifname, addr)
        for ifname, iface in net.interfaces.items()
        for addr in iface.addresses
    }

    def on_link(ip: IP) -> str | None:
        for ifname, iface in net.interfaces.items():
            if any(ip in addr.network for addr in iface.addresses):
                return ifname
        return None

    if ha.peer is None:
        problems.append(Problem("ha.peer", "required when ha.enabled (the other node's address)"))
    elif ha.peer in own:
        problems.append(Problem("ha.peer", f"{ha.peer} is this node's own address"))
    elif on_link(ha.peer) is None:
        problems.append(
            Problem("ha.peer", f"{ha.peer} is outside every interface subnet; the two nodes "
                    "must share a LAN")
        )
    if ha.management_ip is not None:
        if ha.management_ip not in own:
            problems.append(
                Problem("ha.management_ip", f"{ha.management_ip} is not one of this node's "
                        "static addresses")
            )
        elif ha.peer is not None and ha.peer not in own[ha.management_ip][1].network:
            problems.append(
                Problem("ha.management_ip", f"{ha.management_ip} is not on the peer's subnet")
            )
    if ha.cloud and ha.shared_ips:
        problems.append(
            Problem("ha.shared_ips", "must be empty with ha.cloud: a Pure Cloud pair has no "
                    "shared IP (the cloud provider owns the address; switch by hand)")
        )
    if not ha.cloud and not ha.shared_ips:
        problems.append(
            Problem("ha.shared_ips", "at least one node IP is required (or set ha.cloud for a "
                    "Pure Cloud pair)")
        )
    if state.mode is WorkingMode.PURE_CLOUD and not ha.cloud:
        problems.append(
            Problem("ha.cloud", "must be true in pure-cloud mode (the public address moves at "
                    "the cloud provider, by hand)")
        )
    seen: dict[IP, str] = {}
    for i, shared in enumerate(ha.shared_ips):
        path = f"ha.shared_ips[{i}]"
        ip = shared.address.ip
        iface = net.interfaces.get(shared.interface)
        if iface is None:
            problems.append(
                Problem(f"{path}.interface", f"{shared.interface} is not in network.interfaces")
            )
        elif not any(shared.address.network == a.network for a in iface.addresses):
            subnets = ", ".join(str(a.network) for a in iface.addresses) or "none"
            problems.append(
                Problem(f"{path}.address", f"{shared.address} is outside the subnets of "
                        f"{shared.interface} ({subnets})")
            )
        if ip in own:
            problems.append(
                Problem(f"{path}.address", f"{ip} is this node's own address; the node IP must "
                        "be a third address")
            )
        if ip == ha.peer:
            problems.append(Problem(f"{path}.address", f"{ip} is the peer's address"))
        if ip == net.gateway:
            problems.append(Problem(f"{path}.address", f"{ip} is the gateway"))
        if ip in seen:
            problems.append(Problem(f"{path}.address", f"{ip} is already {seen[ip]}"))
        seen.setdefault(ip, path)
    if sum(s.primary for s in ha.shared_ips) > 1:
        problems.append(Problem("ha.shared_ips", "only one node IP may be primary"))
    witnesses = ha.witnesses or ([net.gateway] if net.gateway else [])
    if not witnesses:
        problems.append(
            Problem("ha.witnesses", "none: set ha.witnesses or network.gateway (a slave takes "
                    "over only while it reaches a witness)")
        )
    for i, witness in enumerate(ha.witnesses):
        path = f"ha.witnesses[{i}]"
        if witness in own or witness == ha.peer or witness in seen:
            problems.append(
                Problem(path, f"{witness} is one of the pair's own addresses; a witness is a "
                        "third device (e.g. the gateway)")
            )
        elif on_link(witness) is None:
            problems.append(
                Problem(path, f"{witness} is outside every interface subnet (witnesses are "
                        "probed with ARP)")
            )
    if ha.arbiter is not None:
        address = ha.arbiter.address
        if address in own or address == ha.peer or address in seen:
            problems.append(
                Problem("ha.arbiter.address", f"{address} is one of the pair's own addresses; "
                        "the arbiter runs on a third machine")
            )
        elif ha.cloud:
            problems.append(
                Problem("ha.arbiter", "not used in a Pure Cloud pair (failover is manual)")
            )
    return problems
