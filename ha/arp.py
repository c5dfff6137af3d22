"""ARP on one interface: probes, gratuitous announcements, claims seen, witness liveness.

This module owns every ARP frame the failover daemon sends or reads. ``ArpEndpoint`` holds
one raw AF_PACKET socket per interface; a single reader callback parses each frame and
hands replies to the probes waiting for them, so any number of probes may run at once.
``WitnessMonitor`` uses it to tell whether this node still reaches a witness (by default
the gateway): ARP works without an IP route and is answered by the witness's kernel,
so it measures the one thing that matters, that the LAN segment still carries frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Protocol

from ha.net import (
    BPF_JEQ_K,
    BPF_JEQ_X,
    BPF_LD_H_ABS,
    BPF_LD_W_ABS,
    BPF_TAX,
    ETH_HEADER,
    READ_BUDGET,
    HaNetError,
    bpf_program,
    format_mac,
    interface_index,
    not_outgoing,
    open_packet_socket,
    send_frame,
    waiting_frames,
)
from ha.timer import Periodic

log = logging.getLogger("voxnode.ha.arp")

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_REQUEST = 1
ARP_REPLY = 2
# htype, ptype, hlen, plen, op, sha, spa, tha, tpa
ARP_BODY = struct.Struct("!HHBBH6s4s6s4s")
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ANY_IP = IPv4Address(0)

ClaimHandler = Callable[[IPv4Address, str], None]
REPIN_AFTER_S = 5.0  # the pinned witness MAC silent this long: another may be pinned

_OP, _SPA, _TPA = ETH_HEADER.size + 6, ETH_HEADER.size + 14, ETH_HEADER.size + 24
# What the endpoint reads: replies (to probes, or a claim in reply form) and gratuitous
# requests (sender address = target address). Everybody's ordinary requests, the bulk of
# ARP on a LAN, and our own frames are dropped in the kernel.
ARP_FILTER = bpf_program(not_outgoing([
    (BPF_LD_H_ABS, 0, 0, _OP),
    (BPF_JEQ_K, "accept", 0, ARP_REPLY),
    (BPF_LD_W_ABS, 0, 0, _TPA),
    (BPF_TAX, 0, 0, 0),
    (BPF_LD_W_ABS, 0, 0, _SPA),
    (BPF_JEQ_X, "accept", "drop", 0),
]))


def arp_frame(op: int, src_mac: bytes, sender_ip: IPv4Address, target_mac: bytes,
              target_ip: IPv4Address, *, dst_mac: bytes = BROADCAST) -> bytes:
    """An Ethernet + ARP frame, 42 bytes (the NIC pads it to the 60-byte minimum)."""
    return ETH_HEADER.pack(dst_mac, src_mac, ETH_P_ARP) + ARP_BODY.pack(
        1, ETH_P_IP, 6, 4, op, src_mac, sender_ip.packed, target_mac, target_ip.packed)


@dataclass(frozen=True)
class _Observer:
    callback: ClaimHandler
    ips: frozenset[IPv4Address] | None


class ArpEndpoint:
    """ARP requests, replies and announcements on one interface."""

    def __init__(self, ifname: str, sock: socket.socket) -> None:
        self.ifname = ifname
        self.index = interface_index(ifname)
        # The bound socket's own address carries the MAC, read in this very namespace.
        self._mac_raw: bytes = sock.getsockname()[4]
        self.mac = format_mac(self._mac_raw)
        self._sock = sock
        self._waiters: dict[IPv4Address, list[asyncio.Future[str]]] = {}
        self._observers: list[_Observer] = []
        self._loop = asyncio.get_running_loop()
        self._passive = False
        self._reading = False
        self._listen(True)

    @classmethod
    async def open(cls, ifname: str) -> ArpEndpoint:
        sock = open_packet_socket(ifname, ETH_P_ARP, ARP_FILTER)
        try:
            return cls(ifname, sock)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._listen(False)
            self._sock.close()
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
        self._waiters.clear()

    # The timeout is part of the probe's meaning (no answer within it = absent), not a
    # deadline for the caller to impose, hence the parameter.
    async def probe(self, target: IPv4Address, *, sender_ip: IPv4Address | None,
                    timeout: float) -> str | None:  # noqa: ASYNC109
        """The MAC of the first ARP reply from ``target``, or None after ``timeout``.

        ``sender_ip=None`` sends an RFC 5227 probe (sender 0.0.0.0), which leaves no entry
        for us in the target's neighbour table. A send the kernel drops (link down) just
        counts as an unanswered probe.
        """
        future: asyncio.Future[str] = self._loop.create_future()
        waiting = self._waiters.setdefault(target, [])
        waiting.append(future)
        self._listen(True)
        try:
            self.send_probe(target, sender_ip=sender_ip)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            waiting.remove(future)
            if not waiting and self._waiters.get(target) is waiting:
                del self._waiters[target]
            if self._passive and not self._waiters:
                self._listen(False)

    def _listen(self, on: bool) -> None:
        if on and not self._reading and self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._readable)
            self._reading = True
        elif not on and self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def set_passive(self, passive: bool) -> None:
        """Passive: frames wait in the socket until ``drain()`` reads them (or a probe is
        pending), instead of waking the daemon one by one. For an owner that polls anyway,
        on a timer of its own."""
        self._passive = passive
        self._listen(not passive or bool(self._waiters))

    def drain(self) -> None:
        """Read every frame waiting in the socket now (observers are called from here)."""
        self._readable()

    def send_probe(self, target: IPv4Address, *, sender_ip: IPv4Address | None) -> bool:
        """Send one ARP request for ``target`` without waiting for the reply (``observe``
        sees it); False if the kernel dropped it (link down)."""
        return send_frame(self._sock, arp_frame(ARP_REQUEST, self._mac_raw,
                                                sender_ip or ANY_IP, ZERO_MAC, target),
                          f"ARP probe for {target}")

    def announce(self, ip: IPv4Address, count: int = 1) -> None:
        """Gratuitous ARP for ``ip`` from our MAC, request form then reply form.

        Both forms, as keepalived sends them: some hosts only update their cache from one
        of the two. With the default arp_accept=0, Linux neighbours update an existing
        entry but do not create one.
        """
        request = arp_frame(ARP_REQUEST, self._mac_raw, ip, ZERO_MAC, ip)
        reply = arp_frame(ARP_REPLY, self._mac_raw, ip, BROADCAST, ip)
        for _ in range(count):
            send_frame(self._sock, request, f"gratuitous ARP request for {ip}")
            send_frame(self._sock, reply, f"gratuitous ARP reply for {ip}")

    def observe(self, callback: ClaimHandler,
                ips: Collection[IPv4Address] | None = None) -> Callable[[], None]:
        """Call ``callback(sender_ip, sender_mac)`` for every ARP reply or gratuitous
        announcement another host sends for one of ``ips`` (all when None); returns the
        function that stops it.

        A frame claiming our node IP from a foreign MAC means another node holds it; a
        reply from a witness means the segment still carries our frames.
        """
        observer = _Observer(callback, frozenset(ips) if ips is not None else None)
        self._observers.append(observer)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._observers.remove(observer)
        return stop

    def _readable(self) -> None:
        # a passive endpoint is drained once a heartbeat period: a larger budget, so the
        # witness's answer is not left behind a burst of other replies
        budget = 4 * READ_BUDGET if self._passive else READ_BUDGET
        for frame in waiting_frames(self._sock, f"ARP socket on {self.ifname}", budget):
            self._handle(frame)

    def _handle(self, frame: bytes) -> None:
        if len(frame) < ETH_HEADER.size + ARP_BODY.size:
            return
        htype, ptype, hlen, plen, op, sha, spa, _tha, _tpa = ARP_BODY.unpack_from(
            frame, ETH_HEADER.size)
        if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4) or sha == self._mac_raw:
            return
        sender_ip, sender_mac = IPv4Address(spa), format_mac(sha)
        if op == ARP_REPLY:
            for future in self._waiters.get(sender_ip, ()):
                if not future.done():
                    future.set_result(sender_mac)
        if sender_ip == ANY_IP:
            return  # a probe claims nothing
        for observer in list(self._observers):
            if observer.ips is None or sender_ip in observer.ips:
                try:
                    observer.callback(sender_ip, sender_mac)
                except Exception:  # one faulty observer must not starve the probes
                    log.exception("ARP observer failed on %s", self.ifname)


class Prober(Protocol):
    """What the witness monitor needs: ``ArpEndpoint`` in production, a fake in tests."""

    def send_probe(self, target: IPv4Address, *, sender_ip: IPv4Address | None) -> bool:
        ...

    def drain(self) -> None:
        ...

    def observe(self, callback: ClaimHandler,
                ips: Collection[IPv4Address] | None = None) -> Callable[[], None]:
        ...


@dataclass
class _Sighting:
    last_seen: float | None = None
    mac: str | None = None  # pinned: the first MAC that answered
    impostor_mac: str | None = None  # the last other MAC that answered for the address
    impostor_count: int = 0
    impostor_at: float | None = None


class WitnessMonitor:
    """Probes every witness each ``interval`` seconds; remembers when each last answered.

    A round only sends the requests: answers are taken as they come (``observe``), so a
    round costs one timer and one frame per witness, and no task waits for a reply. With a
    passive endpoint the answers are read by ``refresh()`` (the owner calls it before it
    uses what the monitor knows, and each round does) and dated by the round they answer:
    on a LAN the answer follows the request within a millisecond.
    """

    def __init__(self, endpoint: Prober, witnesses: Sequence[IPv4Address], *,
                 interval: float = 0.2, sender_ip: IPv4Address | None = None,
                 stale_after: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_back: Callable[[], None] | None = None,
                 on_impostor: Callable[[IPv4Address, str], None] | None = None,
                 may_repin: Callable[[], bool] | None = None,
                 on_repin: Callable[[IPv4Address, str, str], None] | None = None) -> None:
        if not witnesses:
            raise ValueError("a witness monitor needs at least one witness address")
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.endpoint = endpoint
        self.witnesses = list(witnesses)
        self.interval = interval
        self.sender_ip = sender_ip
        self.stale_after = stale_after if stale_after is not None else 3 * interval
        self._clock = clock
        self._seen = {w: _Sighting() for w in self.witnesses}
        self._newest: float | None = None
        self._up_since: float | None = None  # start of the current run of fresh answers
        self._round_at: float | None = None  # when the last round was sent
        self._dating: float | None = None  # the time given to answers read by refresh()
        self._on_back = on_back  # called when an answer ends a silence (or is the first)
        self._on_impostor = on_impostor  # called the first time another MAC answers
        # whether another MAC may be pinned once the pinned one is silent (the runtime: only
        # while the peer is heard, so an isolated node is never talked into a witness)
        self._may_repin = may_repin
        self._on_repin = on_repin
        self._stopping = asyncio.Event()
        self._stop_observing = endpoint.observe(self._answered, self.witnesses)

    def _answered(self, address: IPv4Address, mac: str) -> None:
        now = self._dating if self._dating is not None else self._clock()
        sighting = self._seen[address]
        if sighting.mac is None:
            sighting.mac = mac  # pinned
        elif mac != sighting.mac and self._may_repin_now(sighting, now):
            # the pinned MAC has been silent a while and the peer is heard: a replaced
            # gateway (or a forger that answered first at start), not an isolated node
            # being fooled; the new MAC is pinned
            old = sighting.mac
            sighting.mac, sighting.impostor_count, sighting.impostor_mac = mac, 0, None
            if self._on_repin is not None:
                self._on_repin(address, old, mac)
        elif mac != sighting.mac:
            # a reply naming the witness from another MAC: a forgery (it would keep an
            # isolated master serving) or a replaced device; ignored and reported
            first = sighting.impostor_count == 0
            sighting.impostor_mac, sighting.impostor_at = mac, now
            sighting.impostor_count += 1
            if first and self._on_impostor is not None:
                self._on_impostor(address, mac)
            return
        back = self._newest is None or now - self._newest > self.stale_after
        sighting.last_seen = now
        self._newest = now
        if back:
            self._up_since = now
            if self._on_back is not None:
                self._on_back()

    def _may_repin_now(self, sighting: _Sighting, now: float) -> bool:
        silent = sighting.last_seen is None or now - sighting.last_seen >= REPIN_AFTER_S
        return silent and self._may_repin is not None and self._may_repin()

    def last_answer_age(self, now: float) -> float:
        """Seconds since any witness last answered (inf: none ever did)."""
        return float("inf") if self._newest is None else now - self._newest

    def streak(self, now: float) -> float:
        """Seconds the witnesses have answered without a silence over ``stale_after``
        (0 when the last answer is older than that)."""
        if self._up_since is None or self.last_answer_age(now) > self.stale_after:
            return 0.0
        return now - self._up_since

    def reachable(self, now: float, within: float) -> bool:
        """Whether any witness answered in the last ``within`` seconds."""
        return self.last_answer_age(now) <= within

    def details(self, now: float) -> list[dict[str, Any]]:
        """Per witness: address, reachable (within ``stale_after``), age of the last answer
        in ms (None if never), its pinned MAC, and answers from other MACs (ignored)."""
        out: list[dict[str, Any]] = []
        for address, seen in self._seen.items():
            age = None if seen.last_seen is None else now - seen.last_seen
            out.append({
                "address": str(address),
                "reachable": age is not None and age <= self.stale_after,
                "last_seen_age_ms": None if age is None else round(age * 1000),
                "mac": seen.mac,
                "other_macs": None if seen.impostor_count == 0 else {
                    "mac": seen.impostor_mac, "count": seen.impostor_count,
                    "last_seen_age_ms": round((now - (seen.impostor_at or now)) * 1000)},
            })
        return out

    def impostors(self) -> list[tuple[IPv4Address, str, int]]:
        """(witness, other MAC, answers) for each witness another MAC answered for."""
        return [(a, s.impostor_mac, s.impostor_count) for a, s in self._seen.items()
                if s.impostor_count and s.impostor_mac is not None]

    def refresh(self) -> None:
        """Take the answers waiting in a passive endpoint, dated by the last round."""
        self._dating = self._round_at
        try:
            self.endpoint.drain()
        finally:
            self._dating = None

    def probe_once(self) -> None:
        """One round: the answers to the last one, then a request to every witness."""
        self.refresh()
        self._round_at = self._clock()
        for address in self.witnesses:
            try:
                self.endpoint.send_probe(address, sender_ip=self.sender_ip)
            except HaNetError as exc:
                log.warning("witness %s not probed: %s", address, exc.message)

    async def run(self) -> None:
        """Probe rounds every ``interval`` seconds, on a fixed period, until ``stop()``.
        (An owner that already has a timer of the same period calls ``probe_once`` from it
        instead.)"""
        rounds = Periodic(self.interval, self.probe_once)
        try:
            await self._stopping.wait()
        finally:
            rounds.cancel()

    def stop(self) -> None:
        """End ``run`` and stop taking answers."""
        self._stopping.set()
        self._stop_observing()
