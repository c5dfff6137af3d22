"""The faults the pair lab injects; ``PairLab`` (``lab.pair.harness``) has them as methods.

- ``crash`` (freeze, then kill every process of the node; the namespace, its addresses and
  its kernel stay, like a hung machine whose NIC still answers ARP) and ``revive``;
- ``link_down``/``link_up``/``flap`` (the bridge-side veth: the node's eth0 loses carrier);
- ``impair_heartbeat`` (loss and delay±jitter on the heartbeat only, via NFQUEUE: this
  kernel has no ``sch_netem``), ``drop_ethernet_frames`` (nftables netdev egress), ``netem``
  (the node's ``eth0``, where the kernel has it);
- ``block_heartbeat`` (nftables in both nodes); ``isolate``/``partition``/``heal``
  (nftables ``bridge`` family in the bridge namespace; the nodes keep their carrier).

Each returns the ``time.monotonic()`` it took effect where a test measures from it, and
records what is in force in ``FaultState``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.pair.probes import HEARTBEAT_IMPAIRER
from lab.pair.topology import (
    NODE_ADDRESSES,
    NODES,
    VRRP_PROTO,
    LabError,
    Member,
    Node,
    namespace_pids,
    other,
    run,
)


@dataclass
class FaultState:
    """What is in force: the crashed nodes (and when), a blocked heartbeat, a LAN cut."""

    crashed: dict[str, float] = field(default_factory=dict)  # node -> when
    heartbeat_blocked: bool = False
    bridge_filtered: bool = False
    # the last flap's outages as measured: from before the "down" command to after the "up"
    # one returned (an upper bound; a loaded host makes them longer than asked)
    flap_outages: list[float] = field(default_factory=list)


class Faults:
    """The fault methods of ``PairLab``, which provides the namespaces, the commands run in
    them and the helper processes these methods use."""

    ns: dict[str, str]
    faults: FaultState
    workdir: Path
    helper_pids: set[int]
    _want_echo: bool
    _impairers: dict[str, subprocess.Popen[bytes]]

    def ip(self, ns_key: str, *args: str, check: bool = True) -> str:
        raise NotImplementedError

    def nsexec(self, ns_key: str, *argv: str, stdin: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def spawn(self, ns_key: str, argv: Sequence[str], *, log: Path | None = None,
              helper: bool = False) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def start_echo(self, node: Node) -> None:
        raise NotImplementedError

    def crash(self, node: Node) -> float:
        """Freeze every process in the node's namespace (SIGSTOP), then SIGKILL them all;
        the time of the freeze. Freezing first keeps a dying parent from telling a child
        (keepalived's VRRP process sends a priority-0 advert) and so from looking graceful.
        The namespace, its addresses and its kernel stay: the node IP stays configured on
        the dead node and its stack still answers ARP, like a hung machine."""
        pids = [pid for pid in namespace_pids(self.ns[node]) if pid != os.getpid()]
        at = time.monotonic()
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        self.faults.crashed[node] = at
        self.helper_pids.difference_update(pids)
        return at

    def revive(self, node: Node) -> None:
        """After ``crash``: kill stragglers, restart the echo service (the implementation
        restarts its own processes); the node counts as alive again."""
        for pid in namespace_pids(self.ns[node]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.faults.crashed.pop(node, None)
        if self._want_echo:
            self.start_echo(node)

    def link_down(self, member: Member) -> float:
        """Down the bridge-side veth of ``member`` (the node's eth0 loses its carrier)."""
        at = time.monotonic()
        self.ip("br", "link", "set", f"vp-{member}", "down")
        return at

    def link_up(self, member: Member) -> float:
        at = time.monotonic()
        self.ip("br", "link", "set", f"vp-{member}", "up")
        return at

    def flap(self, member: Member, times: int, *, down_s: float, up_s: float) -> float:
        """Down/up the link ``times`` times (down ``down_s``, up ``up_s``); the first down.
        The outages as they happened are in ``faults.flap_outages``."""
        first = time.monotonic()
        self.faults.flap_outages = []
        for _ in range(times):
            down = self.link_down(member)
            time.sleep(down_s)
            self.link_up(member)
            self.faults.flap_outages.append(time.monotonic() - down)
            time.sleep(up_s)
        return first

    def netem(self, node: Node, *, loss_pct: float = 0.0, delay_ms: float = 0.0,
              jitter_ms: float = 0.0) -> None:
        """netem on the node's eth0 (egress: its heartbeats, and its replies to clients).
        Kernels without ``sch_netem`` (this one) fail with LabError "Specified qdisc kind is
        unknown": see ``netem_available`` and ``impair_heartbeat``."""
        args = ["tc", "-n", self.ns[node], "qdisc", "replace", "dev", "eth0", "root", "netem"]
        if loss_pct:
            args += ["loss", f"{loss_pct}%"]
        if delay_ms or jitter_ms:
            args += ["delay", f"{delay_ms}ms", f"{jitter_ms}ms"]
        run(args)

    def clear_netem(self, node: Node) -> None:
        run(["tc", "-n", self.ns[node], "qdisc", "del", "dev", "eth0", "root"], check=False)

    def impair_heartbeat(self, node: Node, *, loss_pct: float, delay_ms: float,
                         jitter_ms: float, proto: str = "vrrp", port: int | None = None) -> None:
        """Loss and delay±jitter on the heartbeat ``node`` sends to its peer, and only on it
        (clients are not affected). This kernel has no ``sch_netem``: an iptables rule in the
        node's OUTPUT chain queues the heartbeat (NFQUEUE, with bypass: if the listener dies,
        as in ``crash``, packets pass) to a listener in the node's namespace that drops and
        delays. Replaces an earlier impairment of the node."""
        self.clear_heartbeat_impairment(node)
        match = self._heartbeat_match(node, proto, port)
        run(["ip", "netns", "exec", self.ns[node], "iptables", "-w", "-N", "VXHA_HB"])
        run(["ip", "netns", "exec", self.ns[node], "iptables", "-w", "-A", "VXHA_HB", *match,
              "-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass"])
        proc = self.spawn(node, [sys.executable, "-I", "-c", HEARTBEAT_IMPAIRER, "7",
                                 str(loss_pct), str(delay_ms), str(jitter_ms)],
                          log=self.workdir / f"impair-{node}.log", helper=True)
        self._impairers[node] = proc
        time.sleep(0.2)  # bound to the queue before packets are sent to it
        if proc.poll() is not None:
            raise LabError(f"the heartbeat impairer on node {node} exited with {proc.returncode}")
        run(["ip", "netns", "exec", self.ns[node], "iptables", "-w", "-I", "OUTPUT",
              "-j", "VXHA_HB"])

    def drop_ethernet_frames(self, node: Node, *, ethertype: int, loss_pct: int) -> None:
        """Drop ``loss_pct`` % of the Ethernet frames of ``ethertype`` that ``node`` sends
        (nftables netdev egress; IP rules do not see non-IP frames). Loss only: without
        ``sch_netem`` there is no way to delay them."""
        ruleset = ("table netdev vxha_l2 {\n  chain egress {\n"
                   '    type filter hook egress device "eth0" priority 0; policy accept;\n'
                   f"    ether type {ethertype:#06x} numgen random mod 100 < {loss_pct} "
                   "counter drop\n  }\n}\n")
        self.nsexec(node, "nft", "delete", "table", "netdev", "vxha_l2", check=False)
        self.nsexec(node, "nft", "-f", "-", stdin=ruleset)

    def ethernet_frames_dropped(self, node: Node) -> int:
        done = self.nsexec(node, "nft", "list", "table", "netdev", "vxha_l2", check=False)
        found = re.search(r"counter packets (\d+)", done.stdout)
        return int(found.group(1)) if found else 0

    def clear_heartbeat_impairment(self, node: Node) -> None:
        ns = self.ns[node]
        self.nsexec(node, "nft", "delete", "table", "netdev", "vxha_l2", check=False)
        run(["ip", "netns", "exec", ns, "iptables", "-w", "-D", "OUTPUT", "-j", "VXHA_HB"],
             check=False)
        run(["ip", "netns", "exec", ns, "iptables", "-w", "-F", "VXHA_HB"], check=False)
        run(["ip", "netns", "exec", ns, "iptables", "-w", "-X", "VXHA_HB"], check=False)
        proc = self._impairers.pop(node, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def heartbeat_impaired_packets(self, node: Node) -> int:
        """Packets of ``node``'s heartbeat sent through the impairer so far (0 if none)."""
        done = run(["ip", "netns", "exec", self.ns[node], "iptables", "-w", "-L", "VXHA_HB",
                     "-v", "-x", "-n"], check=False)
        rows = [line.split() for line in done.stdout.splitlines()[2:] if line.strip()]
        return sum(int(row[0]) for row in rows if row and row[0].isdigit())

    def _heartbeat_match(self, node: Node, proto: str, port: int | None) -> list[str]:
        peer = NODE_ADDRESSES[other(node)]
        if proto == "vrrp":
            return ["-d", peer, "-p", str(VRRP_PROTO)]
        if proto in ("udp", "tcp") and port is not None:
            return ["-d", peer, "-p", proto, "--dport", str(port)]
        raise ValueError(f"heartbeat proto {proto!r} port {port!r} (vrrp, or udp/tcp + port)")

    def block_heartbeat(self, proto: str | int = "vrrp", port: int | None = None) -> float:
        """Drop, in both node namespaces, only the heartbeat from the peer's own address:
        ``proto`` "vrrp" (IP protocol 112) or "udp"/"tcp" with ``port`` (either end)."""
        at = time.monotonic()
        for node in NODES:
            peer = NODE_ADDRESSES[other(node)]
            if proto == "vrrp" or proto == VRRP_PROTO:
                rules = [f"ip saddr {peer} ip protocol {VRRP_PROTO} drop"]
            elif proto in ("udp", "tcp") and port is not None:
                rules = [f"ip saddr {peer} meta l4proto {proto} th dport {port} drop",
                         f"ip saddr {peer} meta l4proto {proto} th sport {port} drop"]
            else:
                raise ValueError(f"block_heartbeat: proto {proto!r} port {port!r} "
                                 "(vrrp, or udp/tcp with a port)")
            ruleset = ("table inet vxha_hb {\n  chain input {\n"
                       "    type filter hook input priority -10; policy accept;\n"
                       + "".join(f"    {rule}\n" for rule in rules) + "  }\n}\n")
            self.nsexec(node, "nft", "-f", "-", stdin=ruleset)
        self.faults.heartbeat_blocked = True
        return at

    def unblock_heartbeat(self) -> float:
        at = time.monotonic()
        for node in NODES:
            self.nsexec(node, "nft", "delete", "table", "inet", "vxha_hb", check=False)
        self.faults.heartbeat_blocked = False
        return at

    def partition(self, side_a: Iterable[Member], side_b: Iterable[Member]) -> float:
        """Cut the LAN between two groups of members (``a``, ``b``, ``c`` the client,
        ``gw`` the bridge's own address 10.88.0.1, the gateway/witness) with an nftables
        ``bridge`` table in the bridge namespace; links stay up. A member in neither group
        still reaches both. Replaces an earlier partition."""
        left, right = set(side_a), set(side_b)
        if left & right:
            raise ValueError(f"partition: {sorted(left & right)} on both sides")
        forward, inbound, outbound = [], [], []
        for x in left:
            for y in right:
                for src, dst in ((x, y), (y, x)):
                    if src == "gw":
                        outbound.append(f'oifname "vp-{dst}" drop')
                    elif dst == "gw":
                        inbound.append(f'iifname "vp-{src}" drop')
                    else:
                        forward.append(f'iifname "vp-{src}" oifname "vp-{dst}" drop')

        def chain(name: str, rules: list[str]) -> str:
            body = "".join(f"    {rule}\n" for rule in rules)
            return (f"  chain {name} {{\n    type filter hook {name} priority -10; "
                    f"policy accept;\n{body}  }}\n")

        ruleset = ("table bridge vxha_lan {\n" + chain("forward", forward)
                   + chain("input", inbound) + chain("output", outbound) + "}\n")
        at = time.monotonic()
        self.nsexec("br", "nft", "delete", "table", "bridge", "vxha_lan", check=False)
        self.nsexec("br", "nft", "-f", "-", stdin=ruleset)
        self.faults.bridge_filtered = True
        return at

    def isolate(self, node: Member) -> float:
        """``node`` hears nobody on the LAN and nobody hears it; its link stays up (for the
        carrier-loss variant use ``link_down``)."""
        members: tuple[Member, ...] = ("a", "b", "c", "gw")
        return self.partition([node], [m for m in members if m != node])

    def heal(self) -> float:
        """Remove partitions/isolation (the bridge table)."""
        at = time.monotonic()
        self.nsexec("br", "nft", "delete", "table", "bridge", "vxha_lan", check=False)
        self.faults.bridge_filtered = False
        return at
