"""The failover daemon inside the agent: heartbeats, witnesses, transitions, the node IP.

``HAManager.configure`` (called by the ``ha`` subsystem on every committed revision)
starts, restarts or stops the runtime. The runtime sends heartbeats on two channels (UDP
between the management addresses, and raw Ethernet frames that IP filtering does not stop),
probes the witnesses with ARP, and every half heartbeat period asks ``ha.machine.decide``
what this node should be. Transitions are serialized under one lock and run in named steps:

- promote: take the node IP, verify it, announce it, bump the epoch, then start the units;
- demote: stop the units, release the node IP, then tell the peer (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from agent.errors import Conflict, VoxnodeError
from agent.events import EventLog
from agent.ports.netlink import NetlinkPort
from agent.state.document import ha_management_ip, ha_witnesses
from agent.state.model import DesiredState, HAConfig
from ha.arp import ArpEndpoint, WitnessMonitor
from ha.l2 import L2Channel
from ha.machine import TIMINGS, Decision, Inputs, PeerView, Timing, decide
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
from ha.store import HAStore, Persisted
from ha.vip import NodeIP, keep_secondaries

log = logging.getLogger("voxnode.ha")

RoleHook = Callable[[Role, Role], Awaitable[object]]
GARP_REPEATS = (0.0, 0.5, 1.0, 2.0)  # seconds after taking the node IP, like keepalived
HOOK_TIMEOUT_S = 60.0


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
        self.witness_up_since: float | None = None
        self.channels = Channels()
        self.bad: dict[str, Any] = {"count": 0, "last": ""}
        self.started = manager.clock()
        self.arp: dict[str, ArpEndpoint] = {}
        self.udp: UdpChannel | None = None
        self.l2: L2Channel | None = None
        self.witness: WitnessMonitor | None = None
        self.node_ip: NodeIP | None = None
        self.decision: Decision | None = None
        self.tasks: list[asyncio.Task[None]] = []

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
                clock=self.m.clock,
            )
        self.node_ip = NodeIP(self.m.netlink, self.cfg.shared_ips, self.arp)
        keep_secondaries(sorted({s.interface for s in self.cfg.shared_ips}), self.m.proc_conf)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._send_loop(), name="ha-send"),
                      asyncio.create_task(self._tick_loop(), name="ha-tick"),
                      asyncio.create_task(self._probe_vip_loop(), name="ha-probe-vip")]
        if self.witness is not None:
            self.tasks.append(asyncio.create_task(self.witness.run(), name="ha-witness"))

    async def close(self) -> None:
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
            role=m.role, epoch=m.persisted.epoch, holds_vip=m.holds_vip,
            witness_ok=self.witness_age() < self.timing.witness_within,
            sent_at=m.wall(), health=tuple(self.decision.blockers if self.decision else ()),
        )

    def send(self, kind: Kind = Kind.HEARTBEAT) -> None:
        payload = encode(self.message(kind), self.key)
        if self.udp is not None:
            self.udp.send(payload, self.peer_ip)
        if self.l2 is not None:
            self.l2.send(payload, self.peer_mac or "ff:ff:ff:ff:ff:ff")

    async def _send_loop(self) -> None:
        while True:
            self.send()
            await asyncio.sleep(self.timing.interval)

    def _on_udp(self, payload: bytes, source: object) -> None:
        self._receive(payload, "udp", None, from_peer=str(source) == str(self.peer_ip))

    def _on_l2(self, payload: bytes, source_mac: str) -> None:
        self._receive(payload, "l2", source_mac, from_peer=source_mac == self.peer_mac)

    def _receive(self, payload: bytes, channel: str, mac: str | None, *,
                 from_peer: bool) -> None:
        now = self.m.clock()
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
                self.unverified_at = now
            return
        setattr(self.channels, channel, now)
        if mac is not None:
            self.peer_mac = mac
        if not fresh:
            return
        released = now if msg.kind is Kind.RELEASE else None
        if released is None and self.peer is not None and msg.role is not Role.MASTER:
            released = self.peer.released_at
        self.peer = PeerView(msg.node_id, msg.role, msg.epoch, msg.holds_vip, msg.witness_ok,
                             now, released)

    def witness_streak(self) -> float:
        """Seconds the witnesses have been reachable without a break (0 when not now)."""
        now = self.m.clock()
        if self.witness_age() >= self.timing.witness_within:
            self.witness_up_since = None
            return 0.0
        if self.witness_up_since is None:
            self.witness_up_since = now
        return now - self.witness_up_since

    def witness_age(self) -> float:
        if self.witness is None:
            return float("inf")
        ages = [d["last_seen_age_ms"] for d in self.witness.details(self.m.clock())]
        known = [a / 1000 for a in ages if a is not None]
        return min(known, default=float("inf"))

    # --- decisions -------------------------------------------------------------------------

    def inputs(self) -> Inputs:
        m = self.m
        return Inputs(
            now=m.clock(), started=self.started, role=m.role, epoch=m.persisted.epoch,
            node_id=self.node_id, peer=self.peer, witness_age=self.witness_age(),
            vip_foreign_holder=m.vip_foreign, cloud=self.cfg.cloud, timing=self.timing,
            hold_off=m.hold_off_until > m.clock(),
            witness_streak=self.witness_streak(),
            unverified_age=(m.clock() - self.unverified_at
                            if self.unverified_at is not None else float("inf")),
        )

    async def _tick_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self.timing.interval / 2)
            ticks += 1
            try:
                self.decision = decide(self.inputs())
                if self.decision.target is not None:
                    await self.m.transition(self.decision.target, self.decision.reason,
                                            bump=self.decision.bump_epoch)
                elif self.m.role is Role.MASTER:
                    await self.m.ensure_node_ip()
                elif ticks % 10 == 0:
                    await self.m.ensure_no_node_ip()
            except (VoxnodeError, OSError, RuntimeError) as exc:
                # never let a failed step kill the runtime: it is retried next tick
                text = exc.message if isinstance(exc, VoxnodeError) else str(exc)
                self.m.events.emit("ha.step-failed", text, level=logging.ERROR)
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
            await asyncio.sleep(self.timing.interval)


class HAManager:
    def __init__(
        self,
        state_dir: Path,
        netlink: NetlinkPort,
        events: EventLog,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        proc_conf: Path = Path("/proc/sys/net/ipv4/conf"),
    ) -> None:
        self.store = HAStore(state_dir)
        self.netlink = netlink
        self.events = events
        self.clock = clock
        self.wall = wall
        self.proc_conf = proc_conf
        self.persisted: Persisted = self.store.load()
        self.role = Role.INIT
        self.holds_vip = False
        self.vip_foreign = False
        self.hold_off_until = 0.0
        self.lock = asyncio.Lock()
        self.runtime: Runtime | None = None
        self.hooks: list[RoleHook] = []
        self.last_transition: dict[str, Any] | None = None
        self.config: HAConfig = HAConfig()
        self.problem: str | None = None
        self.last_state: DesiredState | None = None

    async def reload(self) -> list[str]:
        """Run the last configuration again (a pair key was just installed)."""
        if self.last_state is None:
            return []
        await self.stop(reason="the pair key changed")
        return await self.configure(self.last_state)

    # --- configuration ---------------------------------------------------------------------

    async def configure(self, state: DesiredState) -> list[str]:
        """Start, restart or stop the runtime for ``state``; returns what it did."""
        self.last_state = state
        if self.runtime is not None and self.runtime.state.ha == state.ha and (
            self.runtime.state.network == state.network
        ):
            return []
        done = []
        if self.runtime is not None:
            await self.stop(reason="the pair's settings changed")
            done.append("stopped the failover runtime")
        self.config = state.ha
        self.problem = None
        if not state.ha.enabled:
            self.role = Role.INIT
            return done
        key = self.store.key()
        if key is None:
            self.problem = ("no pair key: run `voxnode ha pair-key generate` on one node and "
                            "`voxnode ha pair-key set KEY` on the other")
            self.events.emit("ha.no-pair-key", self.problem, level=logging.WARNING)
            return done
        runtime = Runtime(self, state, key)
        try:
            await runtime.open()
        except VoxnodeError:
            await runtime.close()
            raise
        self.runtime = runtime
        self.role = Role.OFF if self.persisted.role is Role.OFF else Role.INIT
        await self.ensure_no_node_ip()  # a node IP left by a crash must go before deciding
        runtime.start()
        done.append(f"started the failover runtime ({state.ha.profile.value} profile) as "
                    f"{self.role.value}")
        self.events.emit("ha.started", done[-1])
        return done

    async def stop(self, reason: str = "agent stopping") -> None:
        runtime = self.runtime
        if runtime is None:
            return
        async with self.lock:
            if self.role is Role.MASTER:
                await self._release(reason)
            self.runtime = None
        await runtime.close()

    # --- transitions -----------------------------------------------------------------------

    async def transition(self, target: Role, reason: str, *, bump: bool = False,
                         release: bool = False) -> None:
        async with self.lock:
            if self.runtime is None or target is self.role:
                return
            old = self.role
            steps: list[str] = []
            started = self.clock()
            if target is Role.MASTER:
                try:
                    steps += await self._promote(bump)
                except (VoxnodeError, OSError, RuntimeError) as exc:
                    # fail closed: a half-taken node IP is released again
                    text = exc.message if isinstance(exc, VoxnodeError) else str(exc)
                    steps += [f"PROMOTING failed: {text}", *await self._release_ip()]
                    self.role = old if old is not Role.MASTER else Role.SLAVE
                    self._save()
                    self._record(old, self.role, f"promotion failed: {text}", steps,
                                 self.clock() - started)
                    return
            else:
                if old is Role.MASTER:
                    steps += await self._demote_units(old, target)
                    steps += await self._release_ip()
                self.role = target
                self._save()
                if release and self.runtime is not None:
                    for _ in range(3):
                        self.runtime.send(Kind.RELEASE)
                    steps.append("told the peer to take over")
                elif self.runtime is not None:
                    self.runtime.send()
                    steps.append("told the peer")
                if old is not Role.MASTER:
                    steps += await self._run_hooks(old, target)
            self._record(old, target, reason, steps, self.clock() - started)

    async def _promote(self, bump: bool) -> list[str]:
        runtime = self.runtime
        assert runtime is not None and runtime.node_ip is not None
        old = self.role
        steps = ["PROMOTING: taking the node IP", *await runtime.node_ip.take()]
        held = await runtime.node_ip.held()
        if not all(held):
            missing = [str(s.address)
                       for s, h in zip(runtime.cfg.shared_ips, held, strict=True) if not h]
            raise RuntimeError(f"the kernel does not show {', '.join(missing)} after adding it")
        self.holds_vip = bool(runtime.cfg.shared_ips)
        runtime.node_ip.announce()
        steps.append("PROMOTING: announced the node IP")
        if bump:
            # above every epoch seen in the pair, so a later two-masters meeting keeps us
            seen = runtime.peer.epoch if runtime.peer is not None else 0
            self.persisted.epoch = max(self.persisted.epoch, seen) + 1
        self.role = Role.MASTER
        self._save()
        runtime.send()
        runtime.tasks.append(asyncio.create_task(self._repeat_announce(runtime)))
        if runtime.peer is not None:
            runtime.peer = PeerView(runtime.peer.node_id, runtime.peer.role, runtime.peer.epoch,
                                    runtime.peer.holds_vip, runtime.peer.witness_ok,
                                    runtime.peer.last_seen, None)
        steps.append(f"PROMOTING: master with epoch {self.persisted.epoch}")
        steps += await self._run_hooks(old, Role.MASTER)
        return steps

    async def _repeat_announce(self, runtime: Runtime) -> None:
        begun = self.clock()
        for at in GARP_REPEATS[1:]:
            await asyncio.sleep(max(0.0, begun + at - self.clock()))
            if self.runtime is not runtime or self.role is not Role.MASTER:
                return
            with contextlib.suppress(VoxnodeError, OSError):
                runtime.node_ip.announce() if runtime.node_ip else None

    async def _demote_units(self, old: Role, new: Role) -> list[str]:
        # units first: the PBX must stop answering before the address can move
        self.role = new
        return await self._run_hooks(old, new, prefix="DEMOTING")

    async def _release_ip(self) -> list[str]:
        runtime = self.runtime
        if runtime is None or runtime.node_ip is None:
            return []
        steps = ["DEMOTING: releasing the node IP", *await runtime.node_ip.release()]
        self.holds_vip = False
        self.hold_off_until = self.clock() + 2 * runtime.timing.dead
        return steps

    async def _release(self, reason: str) -> None:
        old = self.role
        steps = await self._demote_units(old, Role.SLAVE)
        steps += await self._release_ip()
        if self.runtime is not None:
            self.runtime.send(Kind.RELEASE)
        self._save()
        self._record(old, Role.SLAVE, reason, steps, 0.0)

    async def ensure_node_ip(self) -> None:
        """While master, put back a node IP that something removed (and say so)."""
        async with self.lock:
            runtime = self.runtime
            if runtime is None or runtime.node_ip is None or self.role is not Role.MASTER:
                return
            if all(await runtime.node_ip.held()):
                return
            restored = await runtime.node_ip.take()
            runtime.node_ip.announce()
            self.events.emit("ha.node-ip-restored", "; ".join(restored), level=logging.WARNING)

    async def ensure_no_node_ip(self) -> None:
        """A node that is not master must not hold the node IP (left by a crash, or added
        by hand): release it, fail closed."""
        async with self.lock:
            runtime = self.runtime
            if runtime is None or runtime.node_ip is None or self.role is Role.MASTER:
                return
            if not any(await runtime.node_ip.held()):
                return
            released = await runtime.node_ip.release()
            self.holds_vip = False
            self.events.emit("ha.node-ip-released",
                             f"{'; '.join(released)} (this node is {self.role.value})",
                             level=logging.WARNING)

    async def _run_hooks(self, old: Role, new: Role, prefix: str = "PROMOTING") -> list[str]:
        steps = []
        for hook in self.hooks:
            try:
                async with asyncio.timeout(HOOK_TIMEOUT_S):
                    await hook(old, new)
                steps.append(f"{prefix}: units for {new.value} converged")
            except (VoxnodeError, TimeoutError) as exc:
                text = exc.message if isinstance(exc, VoxnodeError) else "timed out"
                steps.append(f"{prefix}: units: {text}")
                self.events.emit("ha.units-failed", text, level=logging.ERROR)
        return steps

    def _save(self) -> None:
        self.persisted.role = self.role
        self.store.save(self.persisted)

    def _record(self, old: Role, new: Role, reason: str, steps: list[str], took: float) -> None:
        self.last_transition = {
            "from": old.value, "to": new.value, "reason": reason, "time": self.wall(),
            "epoch": self.persisted.epoch, "steps": steps, "took_ms": round(took * 1000),
        }
        self.store.append_event(self.last_transition)
        self.events.emit("ha.transition", f"{old.value} → {new.value}: {reason}")

    # --- operator control ------------------------------------------------------------------

    async def set_state(self, target: Role) -> None:
        runtime = self._running()
        peer = runtime.peer
        alive = peer is not None and self.clock() - peer.last_seen < runtime.timing.dead
        if target is Role.MASTER and alive and peer is not None and peer.role is Role.MASTER:
            raise Conflict(f"the peer {peer.node_id} is master",
                           remedy="Run `voxnode ha switchover` on it, or set it off first.")
        if target is Role.SLAVE and self.role is Role.MASTER and not runtime.cfg.cloud:
            await self.switchover()
            return
        reason = f"set to {target.value} by the operator"
        await self.transition(target, reason, bump=target is Role.MASTER)

    async def switchover(self) -> None:
        runtime = self._running()
        if self.role is not Role.MASTER:
            raise Conflict(f"this node is {self.role.value}, not master",
                           remedy="Run the switchover on the master.")
        peer = runtime.peer
        if peer is None or self.clock() - peer.last_seen >= runtime.timing.dead:
            raise Conflict("the peer is unreachable: nobody would take over",
                           remedy="Check `voxnode ha status` on both nodes.")
        if peer.role is Role.OFF:
            raise Conflict("the peer is off: set it to slave first")
        await self.transition(Role.SLAVE, "switchover requested by the operator", release=True)

    def _running(self) -> Runtime:
        if self.runtime is None:
            raise Conflict("fault tolerance is not running on this node",
                           remedy=self.problem or "Enable it in the ha section of the "
                           "configuration (ha.enabled: true).")
        return self.runtime

    # --- status ----------------------------------------------------------------------------

    def service_role(self) -> str:
        """The role the services catalogue knows: standalone without a running pair."""
        if self.runtime is None:
            return "standalone"
        return {Role.MASTER: "master", Role.OFF: "off"}.get(self.role, "slave")

    def status(self) -> dict[str, Any]:
        runtime = self.runtime
        out: dict[str, Any] = {
            "enabled": self.config.enabled,
            "running": runtime is not None,
            "problem": self.problem,
            "role": self.role.value if runtime else None,
            "epoch": self.persisted.epoch,
            "cloud": self.config.cloud,
            "profile": self.config.profile.value,
            "pair_key": self.store.key() is not None,
            "last_transition": self.last_transition,
        }
        if runtime is None:
            out["failover_blockers"] = [self.problem] if self.problem else []
            return out
        now = self.clock()
        decision = decide(runtime.inputs())
        peer = runtime.peer
        alive = peer is not None and now - peer.last_seen < runtime.timing.dead

        def age(t: float | None) -> int | None:
            return None if t is None else round((now - t) * 1000)

        out.update({
            "node_id": runtime.node_id,
            "timing_ms": runtime.timing.to_dict(),
            "peer": {
                "address": str(runtime.peer_ip),
                "reachable": alive,
                "role": peer.role.value if peer else None,
                "epoch": peer.epoch if peer else None,
                "holds_node_ip": peer.holds_vip if peer else None,
                "last_seen_ms": age(peer.last_seen if peer else None),
                "channels_ms": {"udp": age(runtime.channels.udp),
                                "ethernet": age(runtime.channels.l2)},
                "rejected_messages": runtime.bad,
            },
            "node_ip": [
                {"address": str(s.address), "interface": s.interface, "primary": s.primary}
                for s in runtime.cfg.shared_ips
            ],
            "node_ip_holder": (
                "this node" if self.holds_vip
                else "peer" if alive and peer is not None and peer.holds_vip
                else "nobody" if alive or not runtime.cfg.shared_ips else "unknown"
            ),
            "witnesses": runtime.witness.details(now) if runtime.witness else [],
            "decision": decision.reason,
            "failover_blockers": list(decision.blockers),
            "next_step": cloud_next_step(self.role, peer.role if alive and peer else None)
            if runtime.cfg.cloud else None,
        })
        return out

    def recent_events(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.store.events(limit)


def cloud_next_step(role: Role, peer: Role | None) -> str | None:
    """The manual switch of a Pure Cloud pair (requirements §5), one step at a time."""
    if role is Role.MASTER and peer in (Role.SLAVE, None):
        return ("to move the service: set this node off (voxnode ha set-state off), move the "
                "static public IP to the other instance at the cloud provider, then set the "
                "other node master")
    if role is Role.OFF and peer is not Role.MASTER:
        return ("move the static public IP to the other instance at the cloud provider, then "
                "on the other node: voxnode ha set-state master")
    if role is Role.OFF and peer is Role.MASTER:
        return "set this node back to slave: voxnode ha set-state slave"
    if role is Role.SLAVE and peer is Role.OFF:
        return ("once the static public IP points at this instance: voxnode ha set-state "
                "master")
    if role is Role.MASTER and peer is Role.OFF:
        return "on the other node: voxnode ha set-state slave"
    return None
