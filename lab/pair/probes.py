"""What the pair lab measures with: the helper programs it runs inside the namespaces (a
UDP echo service per node, the client's prober, a heartbeat impairer on a netfilter queue)
and what they record (``ProbeLog``, ``GapReport``; the node IP sampler's ``VipRead``,
``VipSample``, ``bracket``). Pure parsing and arithmetic; ``lab.pair.harness`` starts the
programs.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROBE_INTERVAL_S = 0.010
SAMPLE_INTERVAL_S = 0.020

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
