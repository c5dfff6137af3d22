"""A failover lab in network namespaces: two nodes, a bridge and a client; faults; probes.

Owned here (importable by ``tests/netns`` and ``bench/failover``; needs root):

- ``PairLab``: namespaces ``vxha-<tag>-br`` (bridge ``br0`` with 10.88.0.1/24, the gateway
  and witness), ``vxha-<tag>-a`` and ``vxha-<tag>-b`` (``eth0``, 10.88.0.11/24 and .12/24
  when ``assign_node_addresses`` is true; a voxnode agent configures them itself),
  ``vxha-<tag>-c`` (the client, 10.88.0.100/24). The node IP is 10.88.0.10/24. Each member
  is joined to ``br0`` by a veth pair whose bridge side is ``vp-<member>``. Teardown kills
  every process in the namespaces (``ip netns pids``) and deletes them, also on failure.
- A UDP echo service (port 7) in each node namespace that answers with its node name, and
  a prober in the client namespace that sends to the node IP every 10 ms and records who
  answered when (``ProbeLog``, ``GapReport``).
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
- ``KeepalivedPair``: keepalived 2.2 (unicast, nopreempt) as the anchor pair.

Host tools: iproute2 (ip, tc, bridge), nftables (nft), iptables (iptables-nft, for the
NFQUEUE rule: nft's own ``queue`` is not built into this kernel), keepalived. ``missing_tools()``
names the missing ones so that tests can skip cleanly; nothing is installed from here.
All times are ``time.monotonic()`` (CLOCK_MONOTONIC is the same in every namespace).
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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

Node = Literal["a", "b"]
Member = Literal["a", "b", "c", "gw"]
NODES: tuple[Node, Node] = ("a", "b")

PREFIX = "vxha-"
SUBNET_PREFIXLEN = 24
GATEWAY_IP = "10.88.0.1"
NODE_IP = "10.88.0.10"
NODE_ADDRESSES: dict[Node, str] = {"a": "10.88.0.11", "b": "10.88.0.12"}
CLIENT_IP = "10.88.0.100"
ECHO_PORT = 7
PROBE_INTERVAL_S = 0.010
SAMPLE_INTERVAL_S = 0.020
VRRP_PROTO = 112
CMD_TIMEOUT_S = 20.0

REQUIRED_TOOLS = ("ip", "tc", "nft", "iptables")


def other(node: Node) -> Node:
    return "b" if node == "a" else "a"


def missing_tools(extra: Iterable[str] = ()) -> list[str]:
    """Host commands this lab needs that are not installed (empty: all there)."""
    return [tool for tool in (*REQUIRED_TOOLS, *extra) if shutil.which(tool) is None]


class LabError(RuntimeError):
    """A lab command failed or a wait timed out; the message says which and why."""


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True,
         timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def namespace_pids(ns: str) -> list[int]:
    """Every process whose network namespace is ``ns`` (``ip netns pids``)."""
    done = _run(["ip", "netns", "pids", ns], check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (``CONFIG_NET_SCH_NETEM``)."""
    try:
        import gzip
        with gzip.open("/proc/config.gz", "rt") as config:
            text = config.read()
    except OSError:
        return Path("/sys/module/sch_netem").exists()
    return "CONFIG_NET_SCH_NETEM=y" in text or "CONFIG_NET_SCH_NETEM=m" in text


def lab_namespaces(tag: str | None = None) -> list[str]:
    """Namespaces of labs (of one lab if ``tag`` is given) that exist now."""
    done = _run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    start = PREFIX if tag is None else f"{PREFIX}{tag}-"
    return [name for name in names if name.startswith(start)]


# --- helper programs run inside namespaces ---------------------------------------------------

ECHO_SERVER = r"""
import socket, sys
name, port = sys.argv[1].encode(), int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("0.0.0.0", port))
while True:
    data, peer = sock.recvfrom(512)
    try:
        sock.sendto(data + b" " + name, peer)
    except OSError:
        pass
"""

# Sends "<seq> <sent>" every interval; writes "<seq> <sent> <received> <node>" per reply.
PROBER = r"""
import select, socket, sys, time
target, port, interval, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
log = open(out, "w", buffering=1)
seq = 0
next_send = time.monotonic()
while True:
    now = time.monotonic()
    if now >= next_send:
        try:
            sock.sendto(f"{seq} {now:.6f}".encode(), (target, port))
        except OSError:
            pass
        seq += 1
        next_send += interval
        if next_send < now:
            next_send = now + interval
    ready, _, _ = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
    while ready:
        try:
            data, _ = sock.recvfrom(512)
        except (BlockingIOError, OSError):
            break
        received = time.monotonic()
        parts = data.decode(errors="replace").split()
        if len(parts) == 3:
            log.write(f"{parts[0]} {parts[1]} {received:.6f} {parts[2]}\n")
"""

# A netfilter queue (NFQUEUE) listener: drops loss% of the queued packets and releases the
# others after delay±jitter ms (uniform), out of order if the draw says so. Raw nfnetlink,
# no library. Args: queue number, loss %, delay ms, jitter ms.
HEARTBEAT_IMPAIRER = r"""
import heapq, random, select, socket, struct, sys, time
qnum, loss_pct = int(sys.argv[1]), float(sys.argv[2])
delay, jitter = float(sys.argv[3]) / 1000, float(sys.argv[4]) / 1000
SUBSYS_QUEUE, NETLINK_NETFILTER = 3, 12
MSG_PACKET, MSG_VERDICT, MSG_CONFIG = 0, 1, 2
def message(kind, attrs):
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, qnum)  # nfgenmsg; res_id = queue
    for atype, payload in attrs:
        size = 4 + len(payload)
        body += struct.pack("=HH", size, atype) + payload + b"\0" * (-size % 4)
    head = struct.pack("=IHHII", 16 + len(body), (SUBSYS_QUEUE << 8) | kind, 1, 0, 0)
    return head + body
def verdict(packet_id, accept):
    sock.send(message(MSG_VERDICT, [(2, struct.pack("!II", int(accept), packet_id))]))
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
sock.bind((0, 0))
sock.send(message(MSG_CONFIG, [(1, struct.pack("!BBH", 1, 0, socket.AF_INET))]))  # bind
sock.send(message(MSG_CONFIG, [(2, struct.pack("!IB", 0, 1) + b"\0\0\0")]))  # copy meta
pending = []
while True:
    wait = max(0.0, pending[0][0] - time.monotonic()) if pending else None
    if select.select([sock], [], [], wait)[0]:
        data, off = sock.recv(65536), 0
        while off + 16 <= len(data):
            size, kind = struct.unpack_from("=IH", data, off)
            if size < 16:
                break
            if kind == (SUBSYS_QUEUE << 8) | MSG_PACKET:
                attr, packet_id = off + 20, None
                while attr + 4 <= off + size:
                    alen, atype = struct.unpack_from("=HH", data, attr)
                    if alen < 4:
                        break
                    if atype & 0x7FFF == 1:  # NFQA_PACKET_HDR: packet id first
                        packet_id = struct.unpack_from("!I", data, attr + 4)[0]
                    attr += (alen + 3) & ~3
                if packet_id is None:
                    pass
                elif random.random() * 100 < loss_pct:
                    verdict(packet_id, False)
                else:
                    hold = max(0.0, random.uniform(delay - jitter, delay + jitter))
                    heapq.heappush(pending, (time.monotonic() + hold, packet_id))
            off += (size + 3) & ~3
    now = time.monotonic()
    while pending and pending[0][0] <= now:
        verdict(heapq.heappop(pending)[1], True)
"""


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    seq: int
    sent: float
    received: float
    node: str


@dataclass(frozen=True)
class GapReport:
    """What the client saw around a fault at ``fault_at``.

    ``gap_ms``: the longest time between two consecutive replies from ``fault_at - 1 s`` to
    ``until`` (a reply just before the fault starts it); when no reply came after the fault,
    the silence up to ``until`` and ``recovered`` is false. ``interleaved``: replies came from
    both nodes after ``settled_at`` (a split-brain symptom).
    """

    fault_at: float
    until: float
    gap_ms: float
    recovered: bool
    before: str | None
    after: str | None
    settled_at: float | None
    interleaved: bool
    replies_after_settle: dict[str, int]


class ProbeLog:
    """The prober's reply file, parsed on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def replies(self) -> list[Reply]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out: list[Reply] = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue  # a line still being written
            with contextlib.suppress(ValueError):
                out.append(Reply(int(parts[0]), float(parts[1]), float(parts[2]), parts[3]))
        out.sort(key=lambda reply: reply.received)
        return out

    def last_reply(self) -> Reply | None:
        replies = self.replies()
        return replies[-1] if replies else None

    def steady_from(self, node: str, since: float, *, for_s: float, now: float) -> bool:
        """Replies from ``node`` alone, none more than 100 ms apart, over the last
        ``for_s`` seconds before ``now`` (and after ``since``)."""
        start = now - for_s
        if since > start:  # not (now - start < for_s): rounding makes that true at times
            return False
        window = [r for r in self.replies() if r.received >= start - 0.1]
        inside = [r for r in window if r.received >= start]
        if not inside or any(r.node != node for r in inside):
            return False
        times = [start, *(r.received for r in inside if r.received <= now), now]
        return all(b - a <= 0.1 for a, b in itertools.pairwise(times))

    def describe(self, start: float, end: float) -> str:
        """What the client got between ``start`` and ``end``: replies per node, the
        longest gap and the last reply (for a failure message)."""
        replies = [r for r in self.replies() if start <= r.received <= end]
        if not replies:
            return f"no reply in the last {end - start:.1f} s"
        counts: dict[str, int] = {}
        for reply in replies:
            counts[reply.node] = counts.get(reply.node, 0) + 1
        times = [start, *(r.received for r in replies), end]
        longest = max(b - a for a, b in itertools.pairwise(times))
        per_node = ", ".join(f"{n}: {c}" for n, c in sorted(counts.items()))
        return (f"in the last {end - start:.1f} s: replies {per_node}; longest gap "
                f"{longest * 1000:.0f} ms; last reply {replies[-1]}")

    def report(self, fault_at: float, until: float, *, settle_s: float = 0.5) -> GapReport:
        replies = [r for r in self.replies() if fault_at - 1.0 <= r.received <= until]
        before = [r for r in replies if r.received < fault_at]
        after = [r for r in replies if r.received >= fault_at]
        times = [r.received for r in replies]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        recovered = bool(after)
        if recovered:
            longest = max(gaps) if gaps else 0.0
        else:
            longest = until - (times[-1] if times else fault_at - 1.0)
        # the recovery is the reply that ends the longest gap; settled = settle_s later
        settled_at: float | None = None
        after_node: str | None = None
        counts: dict[str, int] = {}
        if recovered:
            end_index = (gaps.index(longest) + 1) if gaps else 0
            recovery = replies[end_index]
            after_node = after[-1].node
            settled_at = recovery.received + settle_s
            for reply in replies:
                if reply.received >= settled_at:
                    counts[reply.node] = counts.get(reply.node, 0) + 1
        return GapReport(
            fault_at=fault_at, until=until, gap_ms=round(longest * 1000.0, 1),
            recovered=recovered, before=before[-1].node if before else None, after=after_node,
            settled_at=settled_at, interleaved=len(counts) > 1, replies_after_settle=counts,
        )


@dataclass(frozen=True)
class VipSample:
    at: float
    held: dict[str, bool]  # node -> holds the node IP (a node whose read failed is absent)


@dataclass(frozen=True)
class VipRead:
    node: str
    held: bool
    at: float


def bracket(reads: Sequence[VipRead]) -> VipSample | None:
    """The sample at the middle of three reads taken in turn (x, y, x): y as read, x held
    only if held at both of its reads. Reads of two nodes are never simultaneous: with
    plain pairs, a handover between the two reads (x released, then y took) would look like
    both holding; bracketed, it cannot, while a real overlap longer than two reads shows."""
    if len(reads) != 3:
        return None
    first, middle, last = reads
    if first.node != last.node or first.node == middle.node:
        return None
    return VipSample(middle.at, {middle.node: middle.held,
                                 first.node: first.held and last.held})


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
        return _run(["ip", "-n", self.ns[ns_key], *args], check=check).stdout

    def nsexec(self, ns_key: str, *argv: str, stdin: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.ns[ns_key], *argv], stdin=stdin, check=check)

    def _build(self) -> None:
        for name in self.ns.values():
            _run(["ip", "netns", "add", name])
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
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
            _run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- the VIP sampler ------------------------------------------------------------------

    def holds_vip(self, node: Node) -> bool | None:
        """Whether ``eth0`` of ``node`` carries the node IP (None: could not read)."""
        done = _run(["ip", "-n", self.ns[node], "-j", "-4", "addr", "show", "dev", "eth0"],
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
        _run(args)

    def clear_netem(self, node: Node) -> None:
        _run(["tc", "-n", self.ns[node], "qdisc", "del", "dev", "eth0", "root"], check=False)

    def impair_heartbeat(self, node: Node, *, loss_pct: float, delay_ms: float,
                         jitter_ms: float, proto: str = "vrrp", port: int | None = None) -> None:
        """Loss and delay±jitter on the heartbeat ``node`` sends to its peer, and only on it
        (clients are not affected). This kernel has no ``sch_netem``: an iptables rule in the
        node's OUTPUT chain queues the heartbeat (NFQUEUE, with bypass: if the listener dies,
        as in ``crash``, packets pass) to a listener in the node's namespace that drops and
        delays. Replaces an earlier impairment of the node."""
        self.clear_heartbeat_impairment(node)
        match = self._heartbeat_match(node, proto, port)
        _run(["ip", "netns", "exec", self.ns[node], "iptables", "-w", "-N", "VXHA_HB"])
        _run(["ip", "netns", "exec", self.ns[node], "iptables", "-w", "-A", "VXHA_HB", *match,
              "-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass"])
        proc = self.spawn(node, [sys.executable, "-I", "-c", HEARTBEAT_IMPAIRER, "7",
                                 str(loss_pct), str(delay_ms), str(jitter_ms)],
                          log=self.workdir / f"impair-{node}.log", helper=True)
        self._impairers[node] = proc
        time.sleep(0.2)  # bound to the queue before packets are sent to it
        if proc.poll() is not None:
            raise LabError(f"the heartbeat impairer on node {node} exited with {proc.returncode}")
        _run(["ip", "netns", "exec", self.ns[node], "iptables", "-w", "-I", "OUTPUT",
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
        _run(["ip", "netns", "exec", ns, "iptables", "-w", "-D", "OUTPUT", "-j", "VXHA_HB"],
             check=False)
        _run(["ip", "netns", "exec", ns, "iptables", "-w", "-F", "VXHA_HB"], check=False)
        _run(["ip", "netns", "exec", ns, "iptables", "-w", "-X", "VXHA_HB"], check=False)
        proc = self._impairers.pop(node, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def heartbeat_impaired_packets(self, node: Node) -> int:
        """Packets of ``node``'s heartbeat sent through the impairer so far (0 if none)."""
        done = _run(["ip", "netns", "exec", self.ns[node], "iptables", "-w", "-L", "VXHA_HB",
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


# --- CPU --------------------------------------------------------------------------------------


def _cpu_ticks(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def cpu_percent(pids: Sequence[int], seconds: float) -> float:
    """CPU used by ``pids`` over ``seconds`` (sum, % of one core); processes that exit
    in between count up to their last reading."""
    hz = os.sysconf("SC_CLK_TCK")
    start = {pid: _cpu_ticks(pid) for pid in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    used = 0
    for pid, before in start.items():
        after = _cpu_ticks(pid)
        if before is not None and after is not None:
            used += after - before
    return 100.0 * used / hz / (time.monotonic() - t0)


# --- keepalived -------------------------------------------------------------------------------

KEEPALIVED_PRIORITY = 100  # both equal: the takeover skew is the same whichever node dies
_STATE_LINE = re.compile(r"\((\w+)\) Entering (MASTER|BACKUP|FAULT) STATE")


def render_keepalived_conf(node: Node, *, advert_s: float, priority: int = KEEPALIVED_PRIORITY,
                           router_id: int = 51) -> str:
    """keepalived.conf for one node: unicast to the peer, nopreempt, BACKUP at start."""
    version = 2 if advert_s >= 1 and float(advert_s).is_integer() else 3
    advert = f"{advert_s:g}"
    return f"""# rendered by lab/pair/harness.py for lab node {node}
global_defs {{
    router_id vxha_{node}
    vrrp_version {version}
    vrrp_garp_master_delay 5
    vrrp_garp_master_repeat 5
    vrrp_garp_master_refresh 0
    enable_script_security
}}

vrrp_instance VI_1 {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id {router_id}
    priority {priority}
    advert_int {advert}
    unicast_src_ip {NODE_ADDRESSES[node]}
    unicast_peer {{
        {NODE_ADDRESSES[other(node)]}
    }}
    virtual_ipaddress {{
        {NODE_IP}/{SUBNET_PREFIXLEN} dev eth0 label eth0:vip
    }}
}}
"""


class KeepalivedPair:
    """keepalived in both node namespaces, config and pid files under the lab's workdir
    (never /etc/keepalived, never the host's instance). Roles come from its log."""

    def __init__(self, lab: PairLab, advert_s: float) -> None:
        self.lab = lab
        self.advert_s = advert_s
        self.base = lab.workdir / f"keepalived-{advert_s:g}"
        self.base.mkdir(parents=True, exist_ok=True)
        self.parents: dict[Node, subprocess.Popen[bytes]] = {}

    def paths(self, node: Node) -> dict[str, Path]:
        return {k: self.base / f"{node}.{k}" for k in ("conf", "pid", "vrrp.pid", "log")}

    def start_node(self, node: Node) -> None:
        paths = self.paths(node)
        paths["conf"].write_text(render_keepalived_conf(node, advert_s=self.advert_s))
        self.parents[node] = self.lab.spawn(node, [
            "keepalived", "-n", "-l", "-D", "-P", "-f", str(paths["conf"]),
            "-p", str(paths["pid"]), "-r", str(paths["vrrp.pid"]),
        ], log=paths["log"])

    def start(self, *, timeout: float | None = None) -> Node:
        for node in NODES:
            self.start_node(node)
        return self.wait_master(timeout=timeout or 3 * (4 * self.advert_s + 1))

    def state(self, node: Node) -> str | None:
        """The last state keepalived logged on ``node`` (MASTER, BACKUP, FAULT) or None;
        "DEAD" once its parent exited or the node crashed."""
        proc = self.parents.get(node)
        if proc is None:
            return None
        if proc.poll() is not None or node in self.lab.faults.crashed:
            return "DEAD"
        try:
            text = self.paths(node)["log"].read_text(errors="replace")
        except FileNotFoundError:
            return None
        states = _STATE_LINE.findall(text)
        return states[-1][1] if states else None

    def master(self) -> Node | None:
        masters = [n for n in NODES if self.state(n) == "MASTER"]
        return masters[0] if len(masters) == 1 else None

    def wait_master(self, *, timeout: float) -> Node:
        """One node MASTER holding the node IP, the other BACKUP."""
        deadline = time.monotonic() + timeout
        while True:
            master = self.master()
            if (master is not None and self.state(other(master)) == "BACKUP"
                    and self.lab.vip_holders() == {master}):
                return master
            if time.monotonic() > deadline:
                states = {n: self.state(n) for n in NODES}
                raise LabError(f"keepalived: no single master within {timeout:g} s ({states})")
            time.sleep(0.05)

    def stop_node(self, node: Node, timeout: float = 10.0) -> float:
        """SIGTERM keepalived on ``node`` (it sends a priority-0 advert and drops the node
        IP); the time of the signal."""
        proc = self.parents[node]
        at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
        return at

    def stop(self) -> None:
        for node, proc in self.parents.items():
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.stop_node(node)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def keepalived_lab(advert_s: float, *, sample_vip: bool = True
                   ) -> Iterator[tuple[PairLab, KeepalivedPair]]:
    """A lab with a keepalived pair up (one master, the client answered by it)."""
    with PairLab(sample_vip=sample_vip) as lab:
        pair = KeepalivedPair(lab, advert_s)
        try:
            master = pair.start()
            lab.wait_steady(master, for_s=0.3, timeout=10)
            yield lab, pair
        finally:
            pair.stop()
