"""The failover daemon inside the agent: heartbeats, witnesses, transitions, the node IP.

``HAManager.configure`` (called by the ``ha`` subsystem on every committed revision)
starts, restarts or stops the runtime. The runtime sends heartbeats on two channels (UDP
between the management addresses, and raw Ethernet frames that IP filtering does not stop),
probes the witnesses with ARP, and asks ``ha.machine.decide`` what this node should be
whenever an input changes or a threshold passes (``ha.machine.next_change``). Transitions
are serialized under one lock and run in named steps:

- promote: take the node IP, verify it, announce it, bump the epoch, then start the units;
- demote: stop the units, release the node IP, then tell the peer (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.errors import Conflict, VoxnodeError
from agent.events import EventLog
from agent.ports.netlink import NetlinkPort
from agent.state.model import DesiredState, HAConfig
from ha.machine import PeerView, decide, next_change
from ha.protocol import Kind, Role
from ha.runtime import Runtime
from ha.store import HAStore, Persisted

log = logging.getLogger("voxnode.ha")

RoleHook = Callable[[Role, Role], Awaitable[object]]
GARP_REPEATS = (0.0, 0.5, 1.0, 2.0)  # seconds after taking the node IP, like keepalived
HOOK_TIMEOUT_S = 60.0


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

    async def tick(self) -> None:
        """Decide and act in one step under the transition lock, so a decision is never
        taken on the half-done state of another transition (a switchover stopping units
        sets the role before it releases the node IP) and applied after it."""
        async with self.lock:
            runtime = self.runtime
            if runtime is None:
                return
            inputs = runtime.inputs()
            runtime.decision = decide(inputs)
            runtime.next_change = min(
                next_change(inputs),
                self.hold_off_until if self.hold_off_until > inputs.now else float("inf"))
            target = runtime.decision.target
            if target is not None:
                await self._transition(target, runtime.decision.reason,
                                       bump=runtime.decision.bump_epoch)
                return

    async def transition(self, target: Role, reason: str, *, bump: bool = False,
                         release: bool = False) -> None:
        async with self.lock:
            await self._transition(target, reason, bump=bump, release=release)

    async def _transition(self, target: Role, reason: str, *, bump: bool = False,
                          release: bool = False) -> None:
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
                await self._save()
                self._record(old, self.role, f"promotion failed: {text}", steps,
                             self.clock() - started)
                return
        else:
            if old is Role.MASTER:
                steps += await self._demote_units(old, target)
                steps += await self._release_ip()
            self.role = target
            await self._save()
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
        await self._save()
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
        # units first: the PBX must stop answering before the address can move; no
        # election win while they stop (the peer is about to take over)
        if self.runtime is not None:
            self.hold_off_until = self.clock() + 2 * self.runtime.timing.dead
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
        await self._save()
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

    async def _save(self) -> None:
        # fsync in a worker thread: on a busy disk it can take longer than the dead
        # interval, and the heartbeats (this loop) must go on meanwhile
        self.persisted.role = self.role
        await asyncio.to_thread(self.store.save, replace(self.persisted))

    def _record(self, old: Role, new: Role, reason: str, steps: list[str], took: float) -> None:
        self.last_transition = {
            "from": old.value, "to": new.value, "reason": reason, "time": self.wall(),
            "epoch": self.persisted.epoch, "steps": steps, "took_ms": round(took * 1000),
        }
        self.store.append_event(self.last_transition)
        self.events.emit("ha.transition", f"{old.value} → {new.value}: {reason}")
        if self.runtime is not None:
            self.runtime.wake()  # the new role has rules of its own: decide again

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
