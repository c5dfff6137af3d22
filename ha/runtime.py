"""The pair's sockets and what they tell: heartbeats, witness answers, the arbiter's lease.

``Runtime`` owns, for one ``PairConfig``: the two heartbeat channels (UDP between the
management addresses, raw Ethernet frames), the ARP endpoints (witness probes, the node
IP's announcements), the arbiter client, the node-IP handle, and everything learnt from
them: the peer's last authentic heartbeat, each channel's state, rejected messages, the
witnesses' answers, the lease. It knows nothing of roles but what the manager tells it
through ``local()`` when a heartbeat goes out; the manager (``ha.manager``) owns the role,
the epoch and the transitions, and reads ``observe()`` before each decision.

Channels are independent: a send error on one (a blackhole route makes ``sendto`` fail)
is that channel's state, shown in status and as a health reason; the other channel is
sent all the same, and nothing else fails because of it. A channel that cannot be opened
(the heartbeat port taken) is retried, and the pair runs on the other meanwhile.

Wake-ups are what an idle daemon costs (each one ~0.1 ms of a core on a small VM), so
there are few: one fixed-period timer sends the heartbeat, the witness round and the lease
request; the peer's heartbeat (both copies read together), the arbiter's answer and
decision deadlines wake the daemon. Every reader takes a bounded number of packets per
wake-up, and the kernel drops what does not start like a voxnode message, so a flood
cannot keep the timer from sending heartbeats on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from agent.errors import VoxnodeError
from agent.events import EventLog
from agent.ports.netlink import NetlinkPort
from ha.arbiter import ArbiterClient
from ha.arp import ArpEndpoint, WitnessMonitor
from ha.config import PairConfig
from ha.keys import Keyring
from ha.l2 import L2Channel
from ha.machine import PeerView, Reason
from ha.net import UdpChannel
from ha.protocol import (
    MAGIC,
    BadMessage,
    BadSignature,
    Kind,
    Message,
    NotYetFresh,
    ReplayGuard,
    Role,
    decode_with_key,
    encode,
    new_boot_id,
)
from ha.timer import Periodic
from ha.vip import NodeIP, keep_secondaries

log = logging.getLogger("voxnode.ha.runtime")

RECENT_PAYLOADS = 32  # heartbeats remembered to recognise their copy on the other channel
REOPEN_S = 5.0  # a channel that could not be opened is tried again this often
REJECTED_WINDOW_S = 60.0  # rejected messages are a health reason this long after the last
REJECTED_SOURCES = 32  # sources of rejected messages remembered (the oldest is forgotten)
REJECTED_EVENTS = 10  # events about rejected messages per REJECTED_WINDOW_S, all sources
CLOCK_DIFFERENCE_S = 2.0  # the peer's clock this far from ours is a health reason
MAC_RELEARN_S = 5.0  # Ethernet silent this long while UDP works: learn the peer's MAC anew


@dataclass(frozen=True)
class Local:
    """What this node says of itself in a heartbeat (the manager's state)."""

    role: Role
    epoch: int
    holds_vip: bool


@dataclass(frozen=True)
class Observed:
    """What the sockets have told, as of one reading of the clock (``Runtime.observe``)."""

    now: float
    peer: PeerView | None
    witness_age: float
    witness_streak: float
    vip_foreign: bool
    arbiter_age: float
    lease_until: float


_SEND_HINTS = {
    errno.EINVAL: "no usable route to it (a blackhole route?)",
    errno.EHOSTUNREACH: "no route to it",
    errno.ENETUNREACH: "no route to its network",
    errno.EACCES: "refused by a prohibit route or a firewall",
    errno.EPERM: "dropped by a firewall rule",
    errno.ECONNREFUSED: "rejected by the peer or a firewall",
    errno.ENETDOWN: "the interface is down",
    # a raw frame dropped by an egress firewall rule (nftables netdev egress, tc) comes
    # back as ENOBUFS too, like a full queue
    errno.ENOBUFS: "the send queue is full or an egress firewall rule dropped it",
    errno.EAGAIN: "the send queue is full",
}


@dataclass
class ChannelState:
    """One heartbeat channel: when it last carried an authentic message, and whether
    sending on it works."""

    label: str  # "UDP heartbeats to 10.0.0.12", "Ethernet heartbeats on eth0"
    last_rx: float | None = None
    error: str | None = None  # the send error in force (None: the last send worked)
    error_since: float | None = None
    failed_sends: int = 0
    open_error: str | None = None  # the channel could not be opened (retried)

    def sent(self, exc: OSError | None, now: float) -> str | None:
        """Record a send's outcome; the news for the event log when the state changed."""
        if exc is None:
            if self.error is None:
                return None
            self.error, self.error_since = None, None
            return f"{self.label} work again"
        self.failed_sends += 1
        code = exc.errno or errno.EIO
        text = os.strerror(code)
        hint = _SEND_HINTS.get(code)
        error = f"{text} ({hint})" if hint else text
        if error == self.error:
            return None
        self.error, self.error_since = error, now
        return f"{self.label} fail: {error}"

    def status(self, now: float) -> dict[str, Any]:
        return {
            "last_heard_ms": None if self.last_rx is None else round((now - self.last_rx) * 1000),
            "sending": "ok" if self.error is None and self.open_error is None else "failing",
            "error": self.open_error or self.error,
            "failed_sends": self.failed_sends,
        }


@dataclass
class Rejected:
    """Messages refused from one source (address or MAC)."""

    count: int = 0
    recent: int = 0  # since the last report
    last_reason: str = ""
    last_at: float = 0.0  # monotonic
    last_wall: float = 0.0
    reported_at: float | None = None


@dataclass
class _Clock:
    offset: float | None = None  # the peer's wall clock minus ours, at its last heartbeat


@dataclass
class _Peer:
    view: PeerView | None = None
    mac: str | None = None
    boot: str = ""  # boot id of its last authentic message: what our heartbeats acknowledge
    other_key_at: float | None = None  # when its address last sent a message with a bad MAC
    clock: _Clock = field(default_factory=_Clock)


class Runtime:
    """The pair's sockets for one ``PairConfig``, and what they tell."""

    def __init__(self, cfg: PairConfig, keys: Keyring, *, netlink: NetlinkPort,
                 events: EventLog, clock: Callable[[], float], wall: Callable[[], float],
                 local: Callable[[], Local], on_input: Callable[[], None],
                 on_pulse: Callable[[], None] | None = None,
                 proc_conf: Path = Path("/proc/sys/net/ipv4/conf")) -> None:
        self.cfg = cfg
        self.keys = keys
        self.netlink = netlink
        self.events = events
        self.clock = clock
        self.wall = wall
        self.local = local
        self.on_input = on_input
        self.on_pulse = on_pulse  # called after each heartbeat goes out
        # what the heartbeats say of the database for a role: (position, state, fork)
        self.db_report: Callable[[Role], tuple[str, str, str]] = lambda role: ("", "", "")
        self.proc_conf = proc_conf
        self.boot_id = new_boot_id()
        self.seq = 0
        self.guard = ReplayGuard(self.boot_id)
        self.peer = _Peer()
        self.recent_payloads: deque[bytes] = deque(maxlen=RECENT_PAYLOADS)
        self.udp_state = ChannelState(f"UDP heartbeats to {cfg.peer_ip}")
        self.l2_state = ChannelState(f"Ethernet heartbeats on {cfg.mgmt_if}")
        self.rejected: dict[str, Rejected] = {}
        self.rejected_total = 0
        self._reject_events: deque[float] = deque(maxlen=REJECTED_EVENTS)
        self._unreported = 0  # refused messages no event told of (the budget was spent)
        self.started = clock()
        self.arp: dict[str, ArpEndpoint] = {}
        self.udp: UdpChannel | None = None
        self.l2: L2Channel | None = None
        self.witness: WitnessMonitor | None = None
        self.arbiter: ArbiterClient | None = None
        self.node_ip = NodeIP(netlink, cfg.shared_ips, self.arp)
        self.vip_foreign = False
        self._draining = False
        self._reopen_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._pulse: Periodic | None = None
        self._beat_at = float("-inf")  # when this node last sent its periodic heartbeat

    # --- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        for ifname in self.cfg.interfaces:
            self.arp[ifname] = await ArpEndpoint.open(ifname)
        await self._open_udp()
        await self._open_l2()
        self._open_witness()
        await self._open_arbiter()
        keep_secondaries(sorted({s.interface for s in self.cfg.shared_ips}), self.proc_conf)

    def start(self) -> None:
        self._start_pulse()
        self._tasks.append(asyncio.create_task(self._probe_vip_loop(), name="ha-probe-vip"))

    async def close(self) -> None:
        if self._pulse is not None:
            self._pulse.cancel()
        if self.witness is not None:
            self.witness.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for closable in (self.udp, self.l2, self.arbiter, *self.arp.values()):
            if closable is not None:
                closable.close()

    async def _open_udp(self) -> None:
        try:
            # only the peer's address gets through the kernel's filter: a flood from
            # elsewhere on the LAN costs the daemon nothing
            self.udp = await UdpChannel.open(self.cfg.mgmt_ip, self.cfg.port, self._on_udp,
                                             magic=MAGIC, source=self.cfg.peer_ip)
        except VoxnodeError as exc:
            self._channel_down(self.udp_state, exc.message)
        else:
            self._channel_up(self.udp_state)

    async def _open_l2(self) -> None:
        try:
            self.l2 = await L2Channel.open(self.cfg.mgmt_if, self._on_l2)
        except VoxnodeError as exc:
            self._channel_down(self.l2_state, exc.message)
        else:
            self._channel_up(self.l2_state)

    def _channel_down(self, state: ChannelState, text: str) -> None:
        if state.open_error != text:
            self.events.emit("ha.channel", f"{state.label}: {text}; the pair runs on the other "
                             "channel meanwhile", level=logging.ERROR)
        state.open_error = text
        self._reopen_at = self.clock() + REOPEN_S

    def _channel_up(self, state: ChannelState) -> None:
        if state.open_error is not None:
            self.events.emit("ha.channel", f"{state.label}: open again")
        state.open_error = None

    def _open_witness(self) -> None:
        if not self.cfg.witnesses:
            return
        mgmt = self.cfg.mgmt_ip
        timing = self.cfg.timing
        self.witness = WitnessMonitor(
            self.arp[self.cfg.mgmt_if], list(self.cfg.witnesses),
            interval=timing.witness_interval,
            sender_ip=mgmt if isinstance(mgmt, IPv4Address) else None,
            stale_after=timing.witness_within, clock=self.clock, on_back=self.on_input,
            on_impostor=self._witness_impostor,
            may_repin=lambda: self.peer_alive(self.clock()), on_repin=self._witness_repinned,
        )

    async def _open_arbiter(self) -> None:
        if self.cfg.arbiter is None:
            return
        address, port = self.cfg.arbiter
        try:
            self.arbiter = await ArbiterClient.open(
                self.cfg.mgmt_ip, address, port, node_id=self.cfg.node_id,
                boot_id=self.boot_id, keys=self.keys, clock=self.clock,
                lease=self.cfg.timing.lease, on_answer=self.on_input)
        except VoxnodeError as exc:
            self.events.emit("ha.arbiter", f"arbiter {address}:{port}: {exc.message}",
                             level=logging.ERROR)
            self._reopen_at = self.clock() + REOPEN_S

    def _start_pulse(self) -> None:
        if self._pulse is not None:
            self._pulse.cancel()
        self._pulse = Periodic(self.cfg.timing.interval, self._beat)
        if self.witness is not None:
            # the answers are read each heartbeat and before each decision, not one wake-up
            # each (probes for the node IP still wake the endpoint while they wait)
            self.arp[self.cfg.mgmt_if].set_passive(True)

    async def maintain(self) -> None:
        """Every few seconds: channels that could not be opened are tried again; an
        Ethernet channel silent while UDP works forgets the peer's MAC (a replaced NIC)."""
        now = self.clock()
        l2_rx, udp_rx = self.l2_state.last_rx, self.udp_state.last_rx
        if (self.l2 is not None and self.peer.mac is not None and udp_rx is not None
                and now - udp_rx < self.cfg.timing.dead
                and (l2_rx is None or now - l2_rx > MAC_RELEARN_S)):
            self.peer.mac = None
            self.l2.only_from(None)
        if now < self._reopen_at:
            return
        if self.udp is None:
            await self._open_udp()
        if self.l2 is None:
            await self._open_l2()
        if self.arbiter is None and self.cfg.arbiter is not None:
            await self._open_arbiter()

    async def reconfigure(self, cfg: PairConfig) -> list[str]:
        """Apply a new configuration in place: only what changed is reopened, and the
        heartbeats go on (the manager keeps the role and moves node IPs itself)."""
        old, self.cfg = self.cfg, cfg
        done: list[str] = []
        for ifname in cfg.interfaces:
            if ifname not in self.arp:
                self.arp[ifname] = await ArpEndpoint.open(ifname)
        if (old.mgmt_ip, old.port) != (cfg.mgmt_ip, cfg.port):
            if self.udp is not None:
                self.udp.close()
                self.udp = None
            await self._open_udp()
            done.append(f"heartbeats now on {cfg.mgmt_ip} port {cfg.port}")
        if old.mgmt_if != cfg.mgmt_if:
            if self.l2 is not None:
                self.l2.close()
                self.l2 = None
            self.l2_state = ChannelState(f"Ethernet heartbeats on {cfg.mgmt_if}")
            await self._open_l2()
            done.append(f"Ethernet heartbeats now on {cfg.mgmt_if}")
        if old.peer_ip != cfg.peer_ip:
            self.guard.forget(str(old.peer_ip))
            self.peer = _Peer()
            self.udp_state.label = f"UDP heartbeats to {cfg.peer_ip}"
            done.append(f"peer now {cfg.peer_ip}")
        if (old.witnesses, old.mgmt_if, old.profile) != (cfg.witnesses, cfg.mgmt_if,
                                                        cfg.profile):
            if self.witness is not None:
                self.witness.stop()
                self.witness = None
            self.arp[old.mgmt_if].set_passive(False)
            self._open_witness()
            done.append("witnesses: " + (", ".join(map(str, cfg.witnesses)) or "none"))
        if (old.arbiter, old.profile, old.mgmt_ip) != (cfg.arbiter, cfg.profile, cfg.mgmt_ip):
            if self.arbiter is not None:
                self.arbiter.close()
                self.arbiter = None
            await self._open_arbiter()
            done.append("arbiter: " + (f"{cfg.arbiter[0]}:{cfg.arbiter[1]}"
                                       if cfg.arbiter else "none"))
        if old.profile != cfg.profile:
            done.append(f"{cfg.profile.value} timing")
        self._start_pulse()
        self.node_ip = NodeIP(self.netlink, cfg.shared_ips, self.arp)
        for ifname in [i for i in self.arp if i not in cfg.interfaces]:
            self.arp.pop(ifname).close()
        keep_secondaries(sorted({s.interface for s in cfg.shared_ips}), self.proc_conf)
        self.on_input()
        return done

    # --- heartbeats ------------------------------------------------------------------------

    def message(self, kind: Kind = Kind.HEARTBEAT) -> Message:
        self.seq += 1
        me = self.local()
        db, db_sync, db_fork = self.db_report(me.role)
        return Message(
            kind=kind, node_id=self.cfg.node_id, boot_id=self.boot_id, seq=self.seq,
            # while the node IP is still here (a demotion stopping units) the peer must go
            # on seeing a master: it takes over only once the address is released
            role=Role.MASTER if me.holds_vip else me.role,
            epoch=me.epoch, holds_vip=me.holds_vip,
            witness_ok=self.witness_age(self.clock()) < self.cfg.timing.witness_within,
            sent_at=self.wall(), ack=self.peer.boot,
            dead_ms=round(self.cfg.timing.dead * 1000),
            db=db, db_sync=db_sync, db_fork=db_fork,
        )

    def send(self, kind: Kind = Kind.HEARTBEAT) -> None:
        """One heartbeat on every channel: each is tried whatever happened to the other."""
        payload = encode(self.message(kind), self.keys.signing())
        now = self.clock()
        if self.udp is not None:
            self._note(self.udp_state, self.udp.send(payload, self.cfg.peer_ip), now)
        if self.l2 is not None:
            self._note(self.l2_state, self.l2.send(payload, self.peer.mac or "ff:ff:ff:ff:ff:ff"),
                       now)

    def _note(self, state: ChannelState, exc: OSError | None, now: float) -> None:
        news = state.sent(exc, now)
        if news is not None:
            self.events.emit("ha.channel", news,
                             level=logging.WARNING if exc is not None else logging.INFO)

    def _beat(self) -> None:
        self._beat_at = self.clock()
        # the witness round first: it takes the answers to the last one, so the heartbeat
        # tells the peer what is known now about the witnesses
        if self.witness is not None:
            self.witness.probe_once()
        self.send()
        if self.arbiter is not None:
            self.arbiter.request(self._wants_lease(), self.local())
        if self.on_pulse is not None:
            self.on_pulse()

    def _wants_lease(self) -> bool:
        """The master always renews; another node asks only once the peer has been silent
        for the guard interval (so the current master is the one that keeps the lease), and
        only while it reaches a witness (a node that could not take over must not hold the
        lease: the other could then not take over either)."""
        if self.local().role is Role.MASTER:
            return True
        now = self.clock()
        if self.witness is not None and self.witness_age(now) >= self.cfg.timing.witness_within:
            return False
        view = self.peer.view
        return view is None or now - view.last_seen >= self.cfg.timing.guard

    def _on_udp(self, payload: bytes, source: str) -> None:
        self._receive(payload, self.udp_state, source, None,
                      from_peer=source == str(self.cfg.peer_ip))
        if self.l2 is not None and not self._draining:
            self._drain_other(self.l2)

    def _on_l2(self, payload: bytes, source_mac: str) -> None:
        self._receive(payload, self.l2_state, source_mac, source_mac,
                      from_peer=source_mac == self.peer.mac)
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

    def _receive(self, payload: bytes, channel: ChannelState, source: str, mac: str | None,
                 *, from_peer: bool) -> None:
        now = self.clock()
        if payload in self.recent_payloads:
            # a heartbeat already taken from the other channel (maybe overtaken there by a
            # newer one, with jitter): proof this channel works, authenticated and applied
            channel.last_rx = now
            return
        try:
            msg, key_index = decode_with_key(payload, self.keys.verifying())
        except BadSignature as exc:
            if from_peer:
                self.peer.other_key_at = now
            self._reject(source, str(exc), now)
            return
        except BadMessage as exc:
            self._reject(source, str(exc), now)
            return
        if msg.node_id == self.cfg.node_id:
            return  # our own broadcast frame
        if msg.node_id != str(self.cfg.peer_ip):
            self._reject(source, f"from {msg.node_id}, not from the configured peer", now)
            return
        try:
            fresh = self.guard.check(msg)
        except NotYetFresh:
            # authentic, from a start of the peer we have not acknowledged yet: say we
            # heard it (our next heartbeats acknowledge it), and it will be fresh
            if self.peer.boot != msg.boot_id:
                self.peer.boot = msg.boot_id
                self.send()
            return
        except BadMessage as exc:
            self._reject(source, str(exc), now)
            return
        self.peer.boot = msg.boot_id
        channel.last_rx = now
        if mac is not None and mac != self.peer.mac and self.l2 is not None:
            # the peer's MAC, proven by an authentic frame: from now on the kernel keeps
            # every other host's frames out of the socket
            self.peer.mac = mac
            self.l2.only_from(mac)
        if key_index == 0 and self.keys.confirm("peer"):
            self.events.emit("ha.pair-key", "the peer signs with the new pair key: the previous "
                             "key is no longer accepted")
        if not fresh:
            return
        self.recent_payloads.append(payload)
        self.peer.clock.offset = msg.sent_at - self.wall()
        old = self.peer.view
        released = now if msg.kind is Kind.RELEASE else None
        if released is None and old is not None and msg.role is not Role.MASTER:
            released = old.released_at
        view = PeerView(msg.node_id, msg.role, msg.epoch, msg.holds_vip, msg.witness_ok, now,
                        released, msg.dead_ms / 1000, msg.db, msg.db_sync, msg.db_fork)
        self.peer.view = view
        # news is decided on in this same wake-up; a plain "still here" only moves the
        # deadlines on, and the decision already scheduled reads it when it comes (one
        # decision per dead or guard interval instead of one per heartbeat)
        # (a new database position alone is no news: it moves with every write)
        if old is None or replace(old, last_seen=now, db=view.db) != view or (
                now - old.last_seen >= self.cfg.timing.guard):
            self.on_input()
        self._follow(msg, now)

    def _follow(self, msg: Message, now: float) -> None:
        """A node that is not master sends its own heartbeat in the wake-up in which the
        master's arrives, and its timer steps back to 1.5 periods from now: while the
        master's heartbeats come, the timer never fires (one wake-up a period instead of
        two); when they stop, it beats on its own half a period late, then every period.
        Never faster than every half period of its own (a master of a faster profile): a
        heartbeat that comes sooner only steps the timer back, so the next one locks on."""
        pulse, interval = self._pulse, self.cfg.timing.interval
        if (pulse is None or msg.kind is not Kind.HEARTBEAT or msg.role is not Role.MASTER
                or self.local().role is Role.MASTER):
            return
        pulse.defer(1.5 * interval)
        if now - self._beat_at >= interval / 2:
            try:
                self._beat()
            except Exception:  # as from the timer: logged, the reading goes on
                log.exception("heartbeat in step with the master failed")

    def _reject(self, source: str, reason: str, now: float) -> None:
        self.rejected_total += 1
        record = self.rejected.get(source)
        if record is None:
            if len(self.rejected) >= REJECTED_SOURCES:
                oldest = min(self.rejected, key=lambda s: self.rejected[s].last_at)
                del self.rejected[oldest]
            record = self.rejected[source] = Rejected()
        record.count += 1
        record.recent += 1
        record.last_reason, record.last_at, record.last_wall = reason, now, self.wall()
        if record.reported_at is None or now - record.reported_at >= REJECTED_WINDOW_S:
            # per source, and REJECTED_EVENTS a minute in all: a flood from ever new MACs
            # must not flood the log as well
            budget = self._reject_events
            if len(budget) == budget.maxlen and now - budget[0] < REJECTED_WINDOW_S:
                self._unreported += 1
                return
            more = (f" ({self._unreported} more from other sources since the last report)"
                    if self._unreported else "")
            self.events.emit("ha.message-rejected",
                             f"{record.recent} message(s) from {source} refused: {reason}{more}",
                             level=logging.WARNING)
            budget.append(now)
            record.reported_at, record.recent, self._unreported = now, 0, 0

    def _witness_impostor(self, address: IPv4Address, mac: str) -> None:
        self.events.emit("ha.witness-impostor", f"{mac} answers for the witness {address}, "
                         "which another MAC answered first: its answers are ignored",
                         level=logging.WARNING)

    def _witness_repinned(self, address: IPv4Address, old: str, new: str) -> None:
        self.events.emit("ha.witness-repinned", f"the witness {address} answers from {new} "
                         f"now ({old} has been silent, and the peer is heard)",
                         level=logging.WARNING)

    def take_release(self) -> None:
        """The peer's hand-over was acted on (this node promoted): forget it."""
        view = self.peer.view
        if view is not None and view.released_at is not None:
            self.peer.view = replace(view, released_at=None)

    def give_up_lease(self) -> None:
        """Hand the arbiter's lease back (this node handed the node IP over)."""
        if self.arbiter is not None:
            self.arbiter.request(False, self.local(), give_up=True)

    def announce_now(self) -> None:
        """Tell the peer at once (after a transition), without waiting for the timer."""
        self.send()

    # --- what the node knows ---------------------------------------------------------------

    def witness_age(self, now: float) -> float:
        if self.witness is None:
            return float("inf")
        return self.witness.last_answer_age(now)

    def observe(self) -> Observed:
        """What the sockets have told, as of one reading of the clock."""
        if self.witness is not None:
            self.witness.refresh()
        now = self.clock()
        witness_age = self.witness_age(now)
        # how long the witnesses have answered without a break (0 when they do not now)
        streak = (self.witness.streak(now) if self.witness is not None
                  and witness_age < self.cfg.timing.witness_within else 0.0)
        arbiter = self.arbiter
        return Observed(
            now=now, peer=self.peer.view, witness_age=witness_age, witness_streak=streak,
            vip_foreign=self.vip_foreign,
            arbiter_age=arbiter.answer_age(now) if arbiter is not None else float("inf"),
            lease_until=arbiter.lease_until if arbiter is not None else float("-inf"),
        )

    def peer_alive(self, now: float) -> bool:
        view = self.peer.view
        return view is not None and now - view.last_seen < max(self.cfg.timing.dead, view.dead)

    def health(self, now: float) -> list[Reason]:
        """What is wrong with the pair without stopping a failover (status shows them)."""
        found: list[Reason] = []
        for state in (self.udp_state, self.l2_state):
            if state.open_error is not None:
                found.append(Reason("heartbeat-channel-down",
                                    f"{state.label} cannot run: {state.open_error}"))
            elif state.error is not None:
                found.append(Reason("heartbeat-send-failing", f"{state.label} fail: "
                                    f"{state.error}"))
        other_key = self.peer.other_key_at
        if other_key is not None and now - other_key < REJECTED_WINDOW_S:
            alive = "" if self.peer_alive(now) else ", and none that this node can authenticate"
            found.append(Reason("peer-other-key", "The peer's address sends heartbeats signed "
                                f"with another pair key{alive}: set the same key on both "
                                "nodes (voxnode ha pair-key set)"))
        recent = [(s, r) for s, r in self.rejected.items() if now - r.last_at < REJECTED_WINDOW_S]
        if recent:
            source, record = max(recent, key=lambda item: item[1].last_at)
            total = sum(r.count for _, r in recent)
            found.append(Reason("messages-rejected", f"{total} message(s) refused from "
                                f"{len(recent)} source(s) (last from {source}: "
                                f"{record.last_reason})"))
        offset = self.peer.clock.offset
        if offset is not None and abs(offset) > CLOCK_DIFFERENCE_S and self.peer_alive(now):
            found.append(Reason("clock-difference", f"The peer's clock is {offset:+.0f} s from "
                                "this node's: check NTP on both (failover does not depend on "
                                "it)"))
        if self.witness is not None:
            for address, mac, count in self.witness.impostors():
                found.append(Reason("witness-impostor", f"{mac} answers for the witness "
                                    f"{address} ({count} times): ignored"))
        waiting = self.keys.waiting_for()
        if "peer" in waiting:
            found.append(Reason("rekey-pending", "The peer has not yet used the new pair key: "
                                "both keys are accepted until it does (set the key on the "
                                "peer)"))
        if "arbiter" in waiting:
            found.append(Reason("rekey-pending-arbiter", "The arbiter still answers under the "
                                "previous pair key: put the new key in its key file and "
                                "restart it (both keys are used until then)"))
        if self.cfg.arbiter is not None and self.arbiter is None:
            found.append(Reason("arbiter-client-down", "The arbiter cannot be asked (see the "
                                "events)"))
        return found

    def status(self, now: float) -> dict[str, Any]:
        view = self.peer.view
        alive = self.peer_alive(now)
        out: dict[str, Any] = {
            "address": str(self.cfg.peer_ip),
            "reachable": alive,
            "role": view.role.value if view else None,
            "epoch": view.epoch if view else None,
            "holds_node_ip": view.holds_vip if view else None,
            "last_seen_ms": None if view is None else round((now - view.last_seen) * 1000),
            "channels": {"udp": self.udp_state.status(now),
                         "ethernet": self.l2_state.status(now)},
            "clock_offset_s": (None if self.peer.clock.offset is None
                               else round(self.peer.clock.offset, 3)),
            "rejected_messages": {
                "count": self.rejected_total,
                "sources": [
                    {"source": s, "count": r.count, "last_reason": r.last_reason,
                     "last_seen_ms": round((now - r.last_at) * 1000)}
                    for s, r in sorted(self.rejected.items(), key=lambda i: -i[1].last_at)
                ],
            },
        }
        return out

    async def _probe_vip_loop(self) -> None:
        """While deciding at start: does another device answer for the node IP?"""
        interval = self.cfg.timing.interval
        while self.local().role is Role.INIT:
            targets = [(s.interface, s.address.ip) for s in self.cfg.shared_ips
                       if isinstance(s.address.ip, IPv4Address)]
            if not targets:
                return
            for ifname, ip in targets:
                endpoint = self.arp.get(ifname)
                if endpoint is None:
                    continue
                mac = await endpoint.probe(ip, sender_ip=None, timeout=interval)
                if mac is not None and mac != endpoint.mac:
                    self.vip_foreign = True
                    self.on_input()
            await asyncio.sleep(interval)
