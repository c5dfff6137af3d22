"""One configuration of the pair running: sockets, tasks, heartbeats and the current view.

``Runtime`` owns the two heartbeat channels (UDP between the management addresses, raw
Ethernet frames), the witness monitor and the node-IP handle for one revision of the
``ha`` section; ``HAManager`` (ha.manager) creates a new one whenever that section or the
network changes, and asks it for the inputs of ``ha.machine.decide`` at every decision.

Wake-ups are what an idle daemon costs (each one ~0.1 ms of a core on a small VM, more
than the work it does), so there are few: one fixed-period timer sends the heartbeat and
the witness round, the peer's heartbeat (both copies read together) and decision
deadlines wake the daemon, and nothing else does (witness answers wait in their socket
until the next read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from agent.errors import VoxnodeError
from agent.state.document import ha_management_ip, ha_witnesses
from agent.state.model import DesiredState, HAConfig
from ha.arp import ArpEndpoint, WitnessMonitor
from ha.l2 import L2Channel
from ha.machine import TIMINGS, Decision, Inputs, PeerView, Timing
from ha.net import UdpChannel
from ha.protocol import (
    BadMessage,
    BadSignature,
    Kind,
    Message,
    ReplayGuard,
    Role,
    decode,
    encode,
    new_boot_id,
)
from ha.timer import Periodic
from ha.vip import NodeIP, keep_secondaries

if TYPE_CHECKING:
    from ha.manager import HAManager

KERNEL_CHECK_S = 2.0
RECENT_PAYLOADS = 32  # heartbeats remembered to recognise their copy on the other channel
# Decisions are taken when an input changes and when ``next_change`` says the answer could
# change; in between, at the latest after this many heartbeat periods (a safety net).
IDLE_DECISIONS = 5
WAKE_LATE_S = 0.001  # past a threshold, not on it: equality may round either way


@dataclass
class Channels:
    udp: float | None = None  # monotonic time the last authentic message came in
    l2: float | None = None


class Runtime:
    """One configuration of the pair running: sockets, tasks, and the current view."""

    def __init__(self, manager: HAManager, state: DesiredState, key: bytes) -> None:
        self.m = manager
        self.state = state
        self.cfg: HAConfig = state.ha
        self.timing: Timing = TIMINGS[self.cfg.profile]
        self.key = key
        mgmt = ha_management_ip(state)
        assert mgmt is not None and self.cfg.peer is not None  # guaranteed by validation
        self.node_id = str(mgmt)
        self.mgmt_ip = mgmt
        self.peer_ip = self.cfg.peer
        self.mgmt_if = next(
            name for name, iface in state.network.interfaces.items()
            if any(a.ip == mgmt for a in iface.addresses)
        )
        self.boot_id = new_boot_id()
        self.seq = 0
        self.guard = ReplayGuard()
        self.peer: PeerView | None = None
        self.peer_mac: str | None = None
        self.unverified_at: float | None = None
        self.recent_payloads: deque[bytes] = deque(maxlen=RECENT_PAYLOADS)
        self._draining = False
        self.channels = Channels()
        self.bad: dict[str, Any] = {"count": 0, "last": ""}
        self.started = manager.clock()
        self.arp: dict[str, ArpEndpoint] = {}
        self.udp: UdpChannel | None = None
        self.l2: L2Channel | None = None
        self.witness: WitnessMonitor | None = None
        self.node_ip: NodeIP | None = None
        self.decision: Decision | None = None
        self.next_change = float("inf")  # when the decision could change with no new input
        self._wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.pulse: Periodic | None = None  # heartbeats (and witness rounds), see start()

    async def open(self) -> None:
        interfaces = {s.interface for s in self.cfg.shared_ips} | {self.mgmt_if}
        for ifname in sorted(interfaces):
            self.arp[ifname] = await ArpEndpoint.open(ifname)
        self.udp = await UdpChannel.open(self.mgmt_ip, self.cfg.heartbeat_port, self._on_udp)
        self.l2 = await L2Channel.open(self.mgmt_if, self._on_l2)
        witnesses = [w for w in ha_witnesses(self.state) if isinstance(w, IPv4Address)]
        if witnesses:
            sender = self.mgmt_ip if isinstance(self.mgmt_ip, IPv4Address) else None
            self.witness = WitnessMonitor(
                self.arp[self.mgmt_if], witnesses, interval=self.timing.witness_interval,
                sender_ip=sender, stale_after=self.timing.witness_within,
                clock=self.m.clock, on_back=self.wake,
            )
        self.node_ip = NodeIP(self.m.netlink, self.cfg.shared_ips, self.arp)
        keep_secondaries(sorted({s.interface for s in self.cfg.shared_ips}), self.m.proc_conf)

    def start(self) -> None:
        self._wake.set()  # first decision at once
        # the witness round rides on the heartbeat timer when their periods are the same
        witness_paced = (self.witness is not None
                         and self.timing.witness_interval == self.timing.interval)
        self.pulse = Periodic(self.timing.interval,
                              self._beat_and_probe if witness_paced else self.send)
        self.tasks = [asyncio.create_task(self._tick_loop(), name="ha-tick"),
                      asyncio.create_task(self._probe_vip_loop(), name="ha-probe-vip")]
        if self.witness is not None and not witness_paced:
            self.tasks.append(asyncio.create_task(self.witness.run(), name="ha-witness"))
        elif self.witness is not None:
            # the answers are read each heartbeat and before each decision, not one wake-up
            # each (probes for the node IP still wake the endpoint while they wait)
            self.arp[self.mgmt_if].set_passive(True)

    async def close(self) -> None:
        if self.pulse is not None:
            self.pulse.cancel()
        if self.witness is not None:
            self.witness.stop()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for closable in (self.udp, self.l2, *self.arp.values()):
            if closable is not None:
                closable.close()

    # --- heartbeats ------------------------------------------------------------------------

    def message(self, kind: Kind = Kind.HEARTBEAT) -> Message:
        self.seq += 1
        m = self.m
        return Message(
            kind=kind, node_id=self.node_id, boot_id=self.boot_id, seq=self.seq,
            # while the node IP is still here (a demotion stopping units) the peer must go
            # on seeing a master: it takes over only once the address is released
            role=Role.MASTER if m.holds_vip else m.role,
            epoch=m.persisted.epoch, holds_vip=m.holds_vip,
            witness_ok=self.witness_age() < self.timing.witness_within,
            sent_at=m.wall(), health=tuple(self.decision.blockers if self.decision else ()),
        )

    def send(self, kind: Kind = Kind.HEARTBEAT) -> None:
        payload = encode(self.message(kind), self.key)
        if self.udp is not None:
            self.udp.send(payload, self.peer_ip)
        if self.l2 is not None:
            self.l2.send(payload, self.peer_mac or "ff:ff:ff:ff:ff:ff")

    def _beat_and_probe(self) -> None:
        assert self.witness is not None
        # the round first: it takes the answers to the last one, so the heartbeat tells
        # the peer what is known now about the witnesses
        self.witness.probe_once()
        self.send()

    def _on_udp(self, payload: bytes, source: object) -> None:
        self._receive(payload, "udp", None, from_peer=str(source) == str(self.peer_ip))
        if self.l2 is not None and not self._draining:
            self._drain_other(self.l2)

    def _on_l2(self, payload: bytes, source_mac: str) -> None:
        self._receive(payload, "l2", source_mac, from_peer=source_mac == self.peer_mac)
        if self.udp is not None and not self._draining:
            self._drain_other(self.udp)

    def _drain_other(self, channel: UdpChannel | L2Channel) -> None:
        # the peer sends its two copies back to back: the second one is usually here by
        # now, and reading it in this wake-up saves the daemon one
        self._draining = True
        try:
            channel.drain()
        finally:
            self._draining = False

    def _receive(self, payload: bytes, channel: str, mac: str | None, *,
                 from_peer: bool) -> None:
        now = self.m.clock()
        if payload in self.recent_payloads:
            # a heartbeat already taken from the other channel (maybe overtaken there by a
            # newer one, with jitter): proof this channel works, authenticated and applied
            setattr(self.channels, channel, now)
            if mac is not None:
                self.peer_mac = mac
            return
        try:
            msg = decode(payload, self.key)
            if msg.node_id == self.node_id:
                return  # our own broadcast frame
            if msg.node_id != str(self.peer_ip):
                raise BadMessage(f"from {msg.node_id}, not from the configured peer")
            fresh = self.guard.check(msg, self.m.wall())
        except BadMessage as exc:
            self.bad = {"count": int(self.bad["count"]) + 1, "last": str(exc)}
            if isinstance(exc, BadSignature) and from_peer:
                if self.unverified_at is None or now - self.unverified_at >= self.timing.dead:
                    self.wake()
                self.unverified_at = now
            return
        setattr(self.channels, channel, now)
        if mac is not None:
            self.peer_mac = mac
        if not fresh:
            return
        self.recent_payloads.append(payload)
        released = now if msg.kind is Kind.RELEASE else None
        if released is None and self.peer is not None and msg.role is not Role.MASTER:
            released = self.peer.released_at
        self.peer = PeerView(msg.node_id, msg.role, msg.epoch, msg.holds_vip, msg.witness_ok,
                             now, released)
        # decide in this same wake-up: news acted on at once, and a plain "still here"
        # moves the next deadline on (otherwise the old one would wake the daemon for
        # nothing)
        self.wake()

    def witness_age(self, now: float | None = None) -> float:
        if self.witness is None:
            return float("inf")
        return self.witness.last_answer_age(self.m.clock() if now is None else now)

    # --- decisions -------------------------------------------------------------------------

    def inputs(self) -> Inputs:
        """What the node knows, as of one reading of the clock."""
        if self.witness is not None:
            self.witness.refresh()
        m = self.m
        now = m.clock()
        witness_age = self.witness_age(now)
        # how long the witnesses have answered without a break (0 when they do not now)
        streak = (self.witness.streak(now) if self.witness is not None
                  and witness_age < self.timing.witness_within else 0.0)
        return Inputs(
            now=now, started=self.started, role=m.role, epoch=m.persisted.epoch,
            node_id=self.node_id, peer=self.peer, witness_age=witness_age,
            vip_foreign_holder=m.vip_foreign, cloud=self.cfg.cloud, timing=self.timing,
            hold_off=m.hold_off_until > now, witness_streak=streak,
            unverified_age=(now - self.unverified_at
                            if self.unverified_at is not None else float("inf")),
        )

    def wake(self) -> None:
        """Decide now: an input changed."""
        self._wake.set()

    async def _tick_loop(self) -> None:
        # reading the kernel's addresses is a netlink dump (~ms of Python): the node IP is
        # checked every KERNEL_CHECK_S; decisions are taken when something changes
        clock = self.m.clock
        next_check = clock() + KERNEL_CHECK_S
        while True:
            now = clock()
            wake_at = min(self.next_change, next_check,
                          now + IDLE_DECISIONS * self.timing.interval)
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wake_at - now) + WAKE_LATE_S):
                        await self._wake.wait()
            self._wake.clear()
            try:
                await self.m.tick()
                if clock() >= next_check:
                    next_check = clock() + KERNEL_CHECK_S
                    if self.m.role is Role.MASTER:
                        await self.m.ensure_node_ip()
                    else:
                        await self.m.ensure_no_node_ip()
            except (VoxnodeError, OSError, RuntimeError) as exc:
                # never let a failed step kill the runtime: it is retried next tick
                text = exc.message if isinstance(exc, VoxnodeError) else str(exc)
                self.m.events.emit("ha.step-failed", text, level=logging.ERROR)
                self.next_change = clock()  # retry at the next wake-up below
                await asyncio.sleep(self.timing.dead)

    async def _probe_vip_loop(self) -> None:
        """While deciding at start: does another device answer for the node IP?"""
        targets = [(s.interface, s.address.ip) for s in self.cfg.shared_ips
                   if isinstance(s.address.ip, IPv4Address)]
        while self.m.role is Role.INIT and targets:
            for ifname, ip in targets:
                mac = await self.arp[ifname].probe(ip, sender_ip=None,
                                                   timeout=self.timing.interval)
                if mac is not None and mac != self.arp[ifname].mac:
                    self.m.vip_foreign = True
                    self.wake()
            await asyncio.sleep(self.timing.interval)
