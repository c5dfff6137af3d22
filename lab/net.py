"""The lab's network: one isolated LAN made of network namespaces.

Owns the namespaces ``vxlab-*``: ``vxlab-br`` holds the Linux bridge ``br0`` with the
gateway/witness address 10.77.0.1/24; every member (the nodes and the client) gets its
own namespace with a veth pair whose inner end is ``eth0`` and whose outer end is a port
of ``br0``. No forwarding, no NAT, no route out: nothing in the lab can reach the host's
network. Node addresses are *not* set here — each node's agent applies them from its seed
document; only the client is configured by hand.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lab.util import run

PREFIX = "vxlab-"
BRIDGE_NS = f"{PREFIX}br"
BRIDGE = "br0"
PREFIXLEN = 24
GATEWAY = "10.77.0.1"
NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class Member:
    name: str  # node1, node2, client
    address: str  # 10.77.0.x (without prefix length)

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def port(self) -> str:
        """The bridge-side end of the member's veth pair (in the bridge namespace)."""
        return f"vx-{self.name}"


def namespaces() -> list[str]:
    """The lab's network namespaces that exist now."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def exists(netns: str) -> bool:
    return netns in namespaces()


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    return run(cmd, check=check).stdout


def create_bridge() -> None:
    ip("netns", "add", BRIDGE_NS)
    ip("link", "set", "lo", "up", netns=BRIDGE_NS)
    ip("link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0",
       netns=BRIDGE_NS)
    ip("addr", "add", f"{GATEWAY}/{PREFIXLEN}", "dev", BRIDGE, netns=BRIDGE_NS)
    ip("link", "set", BRIDGE, "up", netns=BRIDGE_NS)


def attach(member: Member, configure: bool) -> None:
    """Create the member's namespace and its eth0, plugged into the bridge.

    ``configure`` also gives eth0 the member's address (the client); nodes only get the
    link up — their agent owns the address.
    """
    ip("netns", "add", member.netns)
    ip("link", "set", "lo", "up", netns=member.netns)
    ip("link", "add", member.port, "netns", BRIDGE_NS, "type", "veth",
       "peer", "name", "eth0", "netns", member.netns)
    ip("link", "set", member.port, "master", BRIDGE, "up", netns=BRIDGE_NS)
    if configure:
        ip("addr", "add", f"{member.address}/{PREFIXLEN}", "dev", "eth0", netns=member.netns)
    ip("link", "set", "eth0", "up", netns=member.netns)


def addresses(netns: str, ifname: str = "eth0") -> list[str]:
    """IPv4 addresses (with prefix length) on ``ifname`` in ``netns``, as the kernel has them."""
    if not exists(netns):
        return []
    out = ip("-j", "-4", "addr", "show", "dev", ifname, netns=netns, check=False)
    try:
        links = json.loads(out or "[]")
    except ValueError:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for link in links for a in link.get("addr_info", [])]


def pids_inside(netns: str) -> list[int]:
    """Host PIDs of every process whose network namespace is ``netns``."""
    try:
        target = os.stat(NETNS_DIR / netns)
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            pids.append(int(entry))
    return pids


def delete(netns: str) -> None:
    if exists(netns):
        ip("netns", "del", netns, check=False)
