"""The pair's own traffic through the node's firewall (firewalld, as the kickstart enables
it with only ssh and 443 open).

``pair_zones`` says which firewalld zones the pair needs, each bound to one source
address, so nothing is opened wider than the peer (and, for the chat database's arbiter
member, the arbiter): from the peer its heartbeats (UDP, ``ha.heartbeat_port``), the
database's replication (TCP, ``ha.replication.database.port``), MongoDB (TCP 27017), ssh
and the replication's own SSH daemon (TCP 7422, when paths or a database are replicated:
the file pushes and the full sync go through it); from the arbiter
only MongoDB. The arbiter's own lease
traffic and the witnesses' ARP need nothing: the node asks and the answers come back as
replies. Ethernet heartbeats are not IP and never reach firewalld. A pair that is
dissolved (``ha.enabled: false``) needs no zone: the files go, and with them the ports.

``render_zone`` writes a zone file (golden-tested); the ha subsystem writes the files
under ``/etc/firewalld/zones`` and reloads firewalld when it runs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from agent.state.model import DatabaseEngine, DesiredState
from ha.replication.mongodb import PORT as MONGODB_PORT
from ha.replication.sshkeys import SYNC_PORT

ZONE_DIR = "/etc/firewalld/zones"
ZONE_PREFIX = "voxnode-pair"
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Zone:
    name: str  # the file is ZONE_DIR/<name>.xml
    purpose: str
    source: IP
    ports: tuple[tuple[int, str], ...]  # (port, "tcp" | "udp")
    services: tuple[str, ...] = ()


def pair_zones(state: DesiredState) -> tuple[Zone, ...]:
    """The zones the pair needs on this node for ``state`` (none while it is not paired)."""
    ha = state.ha
    if not ha.enabled or ha.peer is None:
        return ()
    ports: list[tuple[int, str]] = [(ha.heartbeat_port, "udp")]
    if ha.replication.database.engine is DatabaseEngine.MARIADB:
        ports.append((ha.replication.database.port, "tcp"))
    ports.append((MONGODB_PORT, "tcp"))
    if ha.replication.paths or ha.replication.database.engine is DatabaseEngine.MARIADB:
        ports.append((SYNC_PORT, "tcp"))  # the replication's own SSH daemon
    zones = [Zone(f"{ZONE_PREFIX}-peer", f"the pair's traffic from the peer {ha.peer}",
                  ha.peer, tuple(ports), ("ssh",))]
    if ha.arbiter is not None:
        zones.append(Zone(f"{ZONE_PREFIX}-arbiter", f"the chat database's arbiter member "
                          f"on {ha.arbiter.address}", ha.arbiter.address,
                          ((MONGODB_PORT, "tcp"),)))
    return tuple(zones)


def render_zone(zone: Zone) -> str:
    prefix = 32 if zone.source.version == 4 else 128
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        "<!-- Written by voxnode-agent; removed when the pair is dissolved. -->",
        '<zone target="default">',
        f"  <short>{ZONE_PREFIX}</short>",
        f"  <description>{_text(zone.purpose)}</description>",
        f"  <source address={quoteattr(f'{zone.source}/{prefix}')}/>",
        *(f"  <service name={quoteattr(s)}/>" for s in zone.services),
        *(f"  <port protocol={quoteattr(proto)} port={quoteattr(str(port))}/>"
          for port, proto in zone.ports),
        "</zone>",
    ]
    return "\n".join(lines) + "\n"


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def zone_path(name: str) -> str:
    return f"{ZONE_DIR}/{name}.xml"


ALL_ZONE_NAMES = (f"{ZONE_PREFIX}-peer", f"{ZONE_PREFIX}-arbiter")
