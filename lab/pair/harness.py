"""A failover lab in network namespaces: two nodes, a bridge and a client; faults; probes.

Owned here (importable by ``tests/netns`` and ``bench/pairbench.py``; needs root):

- ``PairLab``: namespaces ``vxha-<tag>-br`` (bridge ``br0`` with 10.88.0.1/24, the gateway
  and witness), ``vxha-<tag>-a`` and ``vxha-<tag>-b`` (``eth0``, 10.88.0.11/24 and .12/24
  when ``assign_node_addresses`` is true; a voxnode agent configures them itself),
  ``vxha-<tag>-c`` (the client, 10.88.0.100/24). The node IP is 10.88.0.10/24 (the names
  and addresses are ``lab.pair.topology``'s). Each member is joined to ``br0`` by a veth
  pair whose bridge side is ``vp-<member>``. Teardown kills every process in the
  namespaces (``ip netns pids``) and deletes them, also on failure.
- A UDP echo service (port 7) in each node namespace that answers with its node name, and
  a prober in the client namespace that sends to the node IP every 10 ms and records who
  answered when (``lab.pair.probes``: ``ProbeLog``, ``GapReport``).
- A VIP sampler that reads ``ip -n NS -j addr`` on the nodes in turn, a read every ~10 ms;
  a node counts as holding the node IP at a sample only if the reads just before and just
  after say so (``bracket``), so a handover between two reads is not a false "both held"
  (``both_held_samples()``).
- Faults: ``crash`` (freeze, then kill every process of the node; the namespace, its
  addresses and its kernel stay, like a hung machine whose NIC still answers ARP),
  ``link_down``/``link_up``/``flap`` (bridge-side veth), ``impair_heartbeat`` (loss and
  delay±jitter on the heartbeat only, via NFQUEUE: this kernel has no ``sch_netem``),
  ``netem`` (node's ``eth0``, where the kernel has it), ``block_heartbeat`` (nftables in
  both nodes), ``isolate``/``partition``/``heal`` (nftables ``bridge`` family in the
  bridge namespace; the node keeps its carrier).

The pairs run in it: ``lab.pair.keepalived`` (the anchor) and ``lab.pair.voxnode`` (two
real agents). Host tools: iproute2 (ip, tc, bridge), nftables (nft), iptables
(iptables-nft, for the NFQUEUE rule: nft's own ``queue`` is not built into this kernel),
keepalived. All times are ``time.monotonic()`` (CLOCK_MONOTONIC is the same in every
namespace).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from lab.pair.probes import (
    ECHO_SERVER,
    HEARTBEAT_IMPAIRER,
    PROBE_INTERVAL_S,
    PROBER,
    SAMPLE_INTERVAL_S,
    ProbeLog,
    VipRead,
    VipSample,
    bracket,
)
from lab.pair.topology import (
    CLIENT_IP,
    ECHO_PORT,
    GATEWAY_IP,
    NODE_ADDRESSES,
    NODE_IP,
    NODES,
    PREFIX,
    SUBNET_PREFIXLEN,
    VRRP_PROTO,
    LabError,
    Member,
    Node,
    namespace_pids,
    other,
    run,
)

# --- the lab ---------------------------------------------------------------------------------


@dataclass
class _Faults:
    crashed: dict[str, float] = field(default_factory=dict)  # node -> when
    heartbeat_blocked: bool = False
    bridge_filtered: bool = False


class PairLab:
    """The namespace lab (see the module docstring). Use as a context manager."""

    def __init__(self, tag: str | None = None, *, assign_node_addresses: bool = True,
                 echo: bool = True, probe: bool = True, sample_vip: bool = True) -> None:
        self.tag = tag or secrets.token_hex(3)
        if not re.fullmatch(r"[a-z0-9]{1,8}", self.tag):
            raise ValueError(f"tag {self.tag!r}: 1-8 lowercase letters or digits")
        self.assign_node_addresses = assign_node_addresses
        self._want_echo, self._want_probe, self._want_sampler = echo, probe, sample_vip
        self.ns: dict[str, str] = {m: f"{PREFIX}{self.tag}-{m}" for m in ("br", "a", "b", "c")}
        self.workdir = Path(tempfile.mkdtemp(prefix=f"vxha-{self.tag}-", dir="/tmp"))
        self.probe = ProbeLog(self.workdir / "probe.log")
        self.faults = _Faults()
        self._procs: list[subprocess.Popen[bytes]] = []
        self.helper_pids: set[int] = set()  # echo servers and prober: not the implementation's
        self._samples: list[VipSample] = []
        self._samples_lock = threading.Lock()
        self._sampler_stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._impairers: dict[str, subprocess.Popen[bytes]] = {}

    # --- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> PairLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def node_ns(self, node: str) -> str:
        return self.ns[node]

    def ip(self, ns_key: str, *args: str, check: bool = True) -> str:
        return run(["ip", "-n", self.ns[ns_key], *args], check=check).stdout

    def nsexec(self, ns_key: str, *argv: str, stdin: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.ns[ns_key], *argv], stdin=stdin, check=check)

    def _build(self) -> None:
        for name in self.ns.values():
            run(["ip", "netns", "add", name])
            run(["ip", "-n", name, "link", "set", "lo", "up"])
        self.ip("br", "link", "add", "br0", "type", "bridge", "stp_state", "0",
                "forward_delay", "0")
        self.ip("br", "addr", "add", f"{GATEWAY_IP}/{SUBNET_PREFIXLEN}", "dev", "br0")
        self.ip("br", "link", "set", "br0", "up")
        for member in ("a", "b", "c"):
            self.ip(member, "link", "add", "eth0", "type", "veth", "peer", "name",
                    f"vp-{member}", "netns", self.ns["br"])
            self.ip("br", "link", "set", f"vp-{member}", "master", "br0", "up")
            self.ip(member, "link", "set", "eth0", "up")
        self.ip("c", "addr", "add", f"{CLIENT_IP}/{SUBNET_PREFIXLEN}", "dev", "eth0")
        if self.assign_node_addresses:
            for node in NODES:
                self.assign_address(node)
        if self._want_echo:
            for node in NODES:
                self.start_echo(node)
        if self._want_probe:
            self._start_prober()
        if self._want_sampler:
            self._sampler = threading.Thread(target=self._sample_loop, name=f"vip-{self.tag}",
                                             daemon=True)
            self._sampler.start()

    def assign_address(self, node: Node) -> None:
        self.ip(node, "addr", "replace", f"{NODE_ADDRESSES[node]}/{SUBNET_PREFIXLEN}", "dev",
                "eth0")

    def spawn(self, ns_key: str, argv: Sequence[str], *, log: Path | None = None,
              helper: bool = False) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a namespace (``ip netns exec`` execs it: the pid is the
        program's own). It is killed at teardown at the latest."""
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns[ns_key], *argv],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log is not None and not isinstance(out, int):
                out.close()
        self._procs.append(proc)
        if helper:
            self.helper_pids.add(proc.pid)
        return proc

    def start_echo(self, node: Node) -> None:
        self.spawn(node, [sys.executable, "-I", "-c", ECHO_SERVER, node, str(ECHO_PORT)],
                   helper=True)

    def _start_prober(self) -> None:
        self.spawn("c", [sys.executable, "-I", "-c", PROBER, NODE_IP, str(ECHO_PORT),
                         str(PROBE_INTERVAL_S), str(self.probe.path)], helper=True)

    def close(self) -> None:
        """Stop the sampler, kill every process in the namespaces, delete them."""
        self._sampler_stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        for _ in range(3):
            pids = [pid for name in self.ns.values() for pid in namespace_pids(name)]
            pids += [p.pid for p in self._procs if p.poll() is None]
            pids = [pid for pid in set(pids) if pid != os.getpid()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for name in self.ns.values():
            run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- the VIP sampler ------------------------------------------------------------------

    def holds_vip(self, node: Node) -> bool | None:
        """Whether ``eth0`` of ``node`` carries the node IP (None: could not read)."""
        done = run(["ip", "-n", self.ns[node], "-j", "-4", "addr", "show", "dev", "eth0"],
                    check=False, timeout=5)
        if done.returncode != 0:
            return None
        try:
            links = json.loads(done.stdout or "[]")
        except ValueError:
            return None
        return any(info.get("local") == NODE_IP
                   for link in links for info in link.get("addr_info", []))

    def _sample_loop(self) -> None:
        reads: deque[VipRead] = deque(maxlen=3)
        turn = itertools.cycle(NODES)
        next_at = time.monotonic()
        while not self._sampler_stop.is_set():
            node = next(turn)
            value: bool | None = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                value = self.holds_vip(node)
            if value is None:
                reads.clear()  # a gap: start a new bracket
            else:
                reads.append(VipRead(node, value, time.monotonic()))
                sample = bracket(reads)
                if sample is not None:
                    with self._samples_lock:
                        self._samples.append(sample)
            next_at = max(next_at + SAMPLE_INTERVAL_S / 2, time.monotonic())
            self._sampler_stop.wait(max(0.0, next_at - time.monotonic()))

    def vip_samples(self, since: float = 0.0) -> list[VipSample]:
        with self._samples_lock:
            return [s for s in self._samples if s.at >= since]

    def both_held_samples(self, since: float = 0.0, *, count_crashed: bool = False
                          ) -> list[VipSample]:
        """Samples in which both nodes held the node IP. A crashed node keeps its addresses
        (its kernel lives on), so by default a node counts only before its crash."""
        out = []
        for sample in self.vip_samples(since):
            holders = [n for n in NODES if sample.held.get(n)]
            if not count_crashed:
                holders = [n for n in holders
                           if n not in self.faults.crashed or sample.at < self.faults.crashed[n]]
            if len(holders) == 2:
                out.append(sample)
        return out

    def vip_holders(self) -> set[Node]:
        """Nodes that hold the node IP now (a fresh read, not the sampler's)."""
        return {node for node in NODES if self.holds_vip(node)}

    def holder_changes(self, since: float) -> int:
        """How often the set of nodes holding the node IP changed since ``since``."""
        changes, last = 0, None
        for sample in self.vip_samples(since):
            if len(sample.held) != 2:
                continue
            now = frozenset(n for n in NODES if sample.held[n])
            if last is not None and now != last:
                changes += 1
            last = now
        return changes

    # --- waiting -------------------------------------------------------------------------

    def wait_steady(self, node: str, *, since: float = 0.0, for_s: float = 0.5,
                    timeout: float = 15.0) -> float:
        """Wait until the client got replies only from ``node``, steadily, for ``for_s``;
        the time that became true. LabError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.probe.steady_from(node, since, for_s=for_s, now=now):
                return now
            if now > deadline:
                raise LabError(f"the client did not get steady replies from node {node} "
                               f"within {timeout:g} s ({self.probe.describe(now - 2.0, now)})")
            time.sleep(0.05)

    # --- faults --------------------------------------------------------------------------

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
        """Down/up the link ``times`` times (down ``down_s``, up ``up_s``); the first down."""
        first = time.monotonic()
        for _ in range(times):
            self.link_down(member)
            time.sleep(down_s)
            self.link_up(member)
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

    # --- processes ------------------------------------------------------------------------

    def implementation_pids(self) -> list[int]:
        """Processes in the node namespaces that are not the lab's own helpers."""
        pids = []
        for node in NODES:
            pids += [p for p in namespace_pids(self.ns[node]) if p not in self.helper_pids]
        return pids
