"""The failover daemon inside the agent: the pair's role, its transitions and the node IP.

``HAManager`` owns the pair's state: the role, the epoch, whether this node holds the node
IP, the hold-offs, the last decision. ``configure`` (called by the ``ha`` subsystem on
every committed revision) starts the runtime (``ha.runtime``: the sockets and what they
tell), reconfigures it in place when the pair's own settings change (``PairConfig``: a DNS
or NTP edit changes nothing here), or stops it. The manager asks ``ha.machine.decide``
what this node should be whenever the runtime reports an input or a threshold passes
(``ha.machine.next_change``), and carries out the transitions, serialized under one lock,
in named steps:

- promote: save the new epoch and role (a disk that refuses it stops the promotion before
  anything is taken), take the node IP, verify it, announce it, then start the units;
- demote: stop the units, release the node IP, then tell the peer (fail closed).

A promotion that fails ends released and holds off (``PROMOTE_HOLD_S``) with the reason
among the blockers: never a take/release loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.errors import Conflict, VoxnodeError
from agent.events import EventLog
from agent.ports.files import FileTree, durable
from agent.ports.netlink import NetlinkPort
from agent.ports.systemd import SystemdPort
from agent.state.model import DesiredState, HAConfig
from ha.config import PairConfig
from ha.keys import Keyring
from ha.machine import Decision, Inputs, PeerView, Reason, decide, next_change
from ha.protocol import Kind, Role, parse_key
from ha.replication.database import DatabaseReplication, DbSettings, SwitchoverIncomplete
from ha.replication.files import FileSettings, FileSync
from ha.replication.fullsync import FullSync, SyncMarker
from ha.runtime import Local, Runtime
from ha.store import HAStore, Persisted

log = logging.getLogger("voxnode.ha")

RoleHook = Callable[[Role, Role], Awaitable[object]]
GARP_REPEATS = (0.0, 0.5, 1.0, 2.0)  # seconds after taking the node IP, like keepalived
HOOK_TIMEOUT_S = 60.0
KERNEL_CHECK_S = 2.0
# Decisions are taken when an input changes and when ``next_change`` says the answer could
# change; in between, at the latest after this many heartbeat periods (a safety net).
IDLE_DECISIONS = 5
WAKE_LATE_S = 0.001  # past a threshold, not on it: equality may round either way
PROMOTE_HOLD_S = 10.0  # after a failed promotion, no new attempt for this long


class PromotionFailed(Exception):
    """A promotion could not be carried out; ``reason`` is what status shows."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.text)
        self.reason = reason


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
        files: FileTree | None = None,
        systemd: SystemdPort | None = None,
    ) -> None:
        self.store = HAStore(state_dir)
        self.files = files  # the node's file tree (the database's drop-in and TLS files)
        self.systemd = systemd  # a real node's: restarts the database for its settings
        self.database: DatabaseReplication | None = None
        self.file_sync: FileSync | None = None
        self.netlink = netlink
        self.events = events
        self.clock = clock
        self.wall = wall
        self.proc_conf = proc_conf
        self.persisted: Persisted = self.store.load()
        self._on_disk = replace(self.persisted)  # what the last successful write holds
        self._save_lock = asyncio.Lock()
        self._reserving = False
        self.role = Role.INIT
        self.holds_vip = False
        self.hold_off_until = 0.0  # just handed the node IP over: no election win
        self.promote_after = float("-inf")
        self.promote_held: Reason | None = None
        self.lock = asyncio.Lock()
        self.runtime: Runtime | None = None
        self.hooks: list[RoleHook] = []
        self.last_transition: dict[str, Any] | None = None
        # the transition under way (its steps run: units, hooks), until it is recorded
        self.in_transition: dict[str, Any] | None = None
        self.config: HAConfig = HAConfig()
        self.problem: str | None = None
        self.decision: Decision | None = None
        self._next_change = float("inf")
        self._next_check = float("inf")
        self._waiting: asyncio.Timeout | None = None  # the decision loop's wait, while it waits
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self.last_state: DesiredState | None = None
        self._background: set[asyncio.Future[None]] = set()
        self.key_installed = False  # read from the key file by ``load``, off the loop
        self.marker = SyncMarker(state_dir)  # whether this node needs a full sync
        self.full_sync = FullSync(self.marker, events, view=self._replication_view,
                                  database=lambda: self.database,
                                  transport=lambda: self.file_sync, state_dir=state_dir,
                                  wall=wall)

    def _replication_view(self) -> tuple[Role, PeerView | None, bool]:
        runtime = self.runtime
        if runtime is None:
            return Role.INIT, None, False
        return self.role, runtime.peer.view, runtime.peer_alive(self.clock())

    async def load(self) -> None:
        """What the manager reads from disk before it serves: whether a pair key is
        installed (in a worker thread: the loop is the heartbeats')."""
        self.key_installed = await asyncio.to_thread(lambda: self.store.key() is not None)
        await asyncio.to_thread(self.marker.load)

    # --- configuration ---------------------------------------------------------------------

    async def configure(self, state: DesiredState) -> list[str]:
        """Start, reconfigure in place, or stop the runtime for ``state``; what it did."""
        self.last_state = state
        self.config = state.ha
        cfg = PairConfig.from_state(state) if state.ha.enabled else None
        runtime = self.runtime
        if runtime is not None and cfg is not None:
            done = await self._restart_database(runtime, DbSettings.from_state(state))
            done += await self._restart_files(runtime, FileSettings.from_state(state))
            if cfg == runtime.cfg:
                return done
            return done + await self._reconfigure(runtime, cfg)
        done = []
        if runtime is not None:
            sync, self.file_sync = self.file_sync, None
            if sync is not None:
                done += await sync.dissolve()
            await self.stop(reason="fault tolerance switched off")
            await asyncio.to_thread(self.store.set_fence, False)
            done.append("stopped the failover runtime")
        self.problem = None
        if cfg is None:
            self.role = Role.INIT
            return done
        keys = await asyncio.to_thread(self._load_keys)
        if keys is None:
            self.problem = ("no pair key: run `voxnode ha pair-key generate` on one node and "
                            "`voxnode ha pair-key set KEY` on the other")
            self.events.emit("ha.no-pair-key", self.problem, level=logging.WARNING)
            return done
        runtime = Runtime(cfg, keys, netlink=self.netlink, events=self.events,
                          clock=self.clock, wall=self.wall, local=self.local,
                          on_input=self.wake, on_pulse=self._after_pulse,
                          proc_conf=self.proc_conf)
        try:
            await runtime.open()
        except VoxnodeError:
            await runtime.close()
            raise
        self.runtime = runtime
        self.role = Role.OFF if self.persisted.role is Role.OFF else Role.INIT
        await self.ensure_no_node_ip()  # a node IP left by a crash must go before deciding
        runtime.start()
        self._wake.set()  # first decision at once
        self._loop_task = asyncio.create_task(self._decide_loop(runtime), name="ha-decide")
        done.append(f"started the failover runtime ({cfg.profile.value} profile) as "
                    f"{self.role.value}")
        done += await self._start_database(runtime, DbSettings.from_state(state))
        done += await self._start_files(runtime, FileSettings.from_state(state))
        self.events.emit("ha.started", done[-1])
        return done

    async def _reconfigure(self, runtime: Runtime, cfg: PairConfig) -> list[str]:
        """The pair's settings changed: keep the role and the node IP, move what moved."""
        async with self.lock:
            old = runtime.cfg
            steps = []
            if self.role is Role.MASTER:
                gone = [s for s in old.shared_ips if s not in cfg.shared_ips]
                if gone:
                    steps += await runtime.node_ip.release_some(gone)
            steps += await runtime.reconfigure(cfg)
            runtime.keys.parties = key_parties(cfg.arbiter is not None)
            if self.role is Role.MASTER and cfg.shared_ips:
                steps += await runtime.node_ip.take()
                runtime.node_ip.announce()
                self.holds_vip = True
            elif self.role is Role.MASTER:
                self.holds_vip = False
        text = "reconfigured the failover runtime in place, role kept (" + (
            "; ".join(steps) or "timing only") + ")"
        self.events.emit("ha.reconfigured", text)
        return [text]

    # --- the database's replication ---------------------------------------------------------

    async def _start_database(self, runtime: Runtime, settings: DbSettings | None) -> list[str]:
        if settings is None:
            return []
        await asyncio.to_thread(self.store.set_fence, True)
        database = DatabaseReplication(settings, lambda: runtime.keys.current, self.events,
                                       files=self.files, systemd=self.systemd,
                                       wall=self.wall,
                                       saved_dir=self.marker.path.parent / "saved")
        if self.marker.database_incomplete and self.marker.needed is not None:
            # a copy that replaced part of the databases and never finished (the agent
            # stopped): no replicating on top of it
            database.incomplete = str(self.marker.needed["reason"])
        self.database = database
        done = await self._prepare_database(database)
        runtime.db_report = database.report
        database.start(lambda: (self.role, runtime.peer.view,
                                runtime.peer_alive(self.clock())))
        return [*done, f"following the roles with the database on "
                f"{settings.socket} (replica of {settings.peer} while slave)"]

    async def _prepare(self, stream: DatabaseReplication | FileSync, kind: str,
                       what: str) -> list[str]:
        """``stream.prepare()`` (its files, derived from the pair key); a failure is an
        event and a step, never the end of the pair's start."""
        try:
            return await stream.prepare()
        except (OSError, VoxnodeError) as exc:
            text = exc.message if isinstance(exc, VoxnodeError) else str(exc)
            self.events.emit(f"replication.{kind}", f"{what} cannot be written: {text}",
                             level=logging.ERROR)
            return [f"{what} not written: {text}"]

    async def _prepare_database(self, database: DatabaseReplication) -> list[str]:
        return await self._prepare(database, "database-files",
                                   "the database's replication files")

    async def _restart_database(self, runtime: Runtime, settings: DbSettings | None
                                ) -> list[str]:
        current = self.database.settings if self.database is not None else None
        if settings == current:
            return []
        await self._stop_database()
        runtime.db_report = lambda role: ("", "", "")
        if settings is None:
            await asyncio.to_thread(self.store.set_fence, False)
        return await self._start_database(runtime, settings) or [
            "stopped following the roles with the database"]

    async def _stop_database(self) -> None:
        database, self.database = self.database, None
        if database is not None:
            await database.stop()

    # --- the file sync -----------------------------------------------------------------------

    async def _start_files(self, runtime: Runtime, settings: FileSettings | None) -> list[str]:
        if settings is None:
            return []
        sync = FileSync(settings, lambda: runtime.keys.current, self.events, files=self.files,
                        systemd=self.systemd, wall=self.wall)
        self.file_sync = sync
        if self.full_sync.running is None:  # a pause left by an agent stopped mid-copy
            await asyncio.to_thread(self.full_sync.cleanup_after_crash, sync)
        done = await self._prepare_files(sync)
        sync.start(lambda: (self.role, runtime.peer.view, runtime.peer_alive(self.clock())))
        return [*done, f"pushing {', '.join(settings.paths)} to {settings.peer} while master "
                f"({settings.bandwidth_kb} KiB/s)"]

    async def _prepare_files(self, sync: FileSync) -> list[str]:
        return await self._prepare(sync, "files-setup", "the file sync's files")

    async def _restart_files(self, runtime: Runtime, settings: FileSettings | None
                             ) -> list[str]:
        current = self.file_sync.settings if self.file_sync is not None else None
        if settings == current:
            return []
        sync, self.file_sync = self.file_sync, None
        done = await sync.dissolve() if sync is not None and settings is None else []
        if sync is not None and settings is not None:
            await sync.stop()
        return [*done, *await self._start_files(runtime, settings)] or [
            "stopped the file sync"]

    async def _stop_files(self) -> None:
        sync, self.file_sync = self.file_sync, None
        if sync is not None:
            await sync.stop()

    def _load_keys(self) -> Keyring | None:
        key = self.store.key()
        if key is None:
            return None
        previous, until = self.store.previous_key()
        return Keyring(key, previous, until, wall=self.wall, on_change=self._keys_changed,
                       parties=key_parties(self.config.arbiter is not None))

    def _keys_changed(self, keys: Keyring) -> None:
        # persisted off the loop; a failure only shortens the window at a restart
        async def save() -> None:
            try:
                await asyncio.to_thread(self.store.save_previous_key, keys.previous,
                                        keys.previous_until)
            except OSError as exc:
                self.events.emit("ha.pair-key", f"cannot save the previous pair key: "
                                 f"{exc.strerror}", level=logging.ERROR)
        self._spawn(save())

    async def install_key(self, text: str | None) -> dict[str, Any]:
        """A new pair key (``None``: generate one). A running pair goes on with the old and
        the new key for a window, so neither node loses the other while the operator sets
        the key on the peer; nothing restarts."""
        if text is None:
            text = self.store.new_key_text()
        else:
            self.store.check_key(text)
        new = parse_key(text)
        await asyncio.to_thread(self.store.write_key, text)
        self.key_installed = True
        runtime = self.runtime
        if runtime is not None:
            runtime.keys.rekey(new)
            note = ("the pair goes on: both keys are accepted until the peer uses the new "
                    "one; set it on the peer now")
            if self.database is not None:
                await self._prepare_database(self.database)
            if self.file_sync is not None:
                await self._prepare_files(self.file_sync)
        elif self.last_state is not None:
            note = "; ".join(await self.configure(self.last_state)) or "nothing to run"
        else:
            note = "installed"
        self.events.emit("ha.pair-key", "a new pair key was installed")
        return {"key": text.strip().lower(), "runtime": note}

    async def stop(self, reason: str = "agent stopping") -> None:
        runtime = self.runtime
        if runtime is None:
            return
        async with self.lock:
            if self.role is Role.MASTER:
                await self._release(reason)
            self.runtime = None
        for task in (self._loop_task, self._announcer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop_task = self._announcer = None
        await self._stop_database()
        await self._stop_files()
        await runtime.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)  # a reference until it is done
        task.add_done_callback(self._background.discard)

    # --- the decision loop -----------------------------------------------------------------

    def local(self) -> Local:
        return Local(self.role, self.persisted.epoch, self.holds_vip)

    def wake(self) -> None:
        """Decide now: an input changed."""
        self._wake.set()

    def inputs(self, runtime: Runtime) -> Inputs:
        seen = runtime.observe()
        cfg = runtime.cfg
        return Inputs(
            now=seen.now, started=runtime.started, role=self.role,
            epoch=self.persisted.epoch, node_id=cfg.node_id, peer=seen.peer,
            witness_age=seen.witness_age, vip_foreign_holder=seen.vip_foreign,
            cloud=cfg.cloud, timing=cfg.timing, hold_off=self.hold_off_until > seen.now,
            witness_streak=seen.witness_streak, promote_after=self.promote_after,
            promote_held=self.promote_held, arbiter=cfg.arbiter is not None,
            data_risk=self._data_risk(runtime),
            arbiter_age=seen.arbiter_age, lease_until=seen.lease_until,
        )

    def _data_risk(self, runtime: Runtime) -> Reason | None:
        """Why this node must not take over on its own: its data is not the master's (a
        full sync needed or under way, a diverged database), or the master's database
        replication was asynchronous."""
        found = self.marker.reason()
        if found is None and self.database is not None:
            found = (self.database.own_risk()
                     or DatabaseReplication.risk(runtime.peer.view))
        return found

    async def _decide_loop(self, runtime: Runtime) -> None:
        # reading the kernel's addresses is a netlink dump (~ms of Python): the node IP is
        # checked every KERNEL_CHECK_S; decisions are taken when something changes
        clock = self.clock
        self._next_check = clock() + KERNEL_CHECK_S
        while self.runtime is runtime:
            now = clock()
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._wait_for(runtime, now)) as waiting:
                        self._waiting = waiting
                        try:
                            await self._wake.wait()
                        finally:
                            self._waiting = None
            self._wake.clear()
            try:
                await self.tick()
                if clock() >= self._next_check:
                    self._next_check = clock() + KERNEL_CHECK_S
                    await runtime.maintain()
                    if self.role is Role.MASTER:
                        await self.ensure_node_ip()
                    else:
                        await self.ensure_no_node_ip()
            except (VoxnodeError, OSError, RuntimeError) as exc:
                # never let a failed step kill the loop: it is retried after a pause
                text = exc.message if isinstance(exc, VoxnodeError) else str(exc)
                self.events.emit("ha.step-failed", text, level=logging.ERROR)
                self._next_change = clock()
                await asyncio.sleep(runtime.cfg.timing.dead)

    def _deadline(self, inputs: Inputs) -> float:
        """When the decision could change with no news: a threshold of the rules, or the
        end of a hold-off after a hand-over."""
        hold_off = self.hold_off_until if self.hold_off_until > inputs.now else float("inf")
        return min(next_change(inputs), hold_off)

    def _wait_for(self, runtime: Runtime, now: float) -> float:
        """Seconds until the loop must decide again with no news."""
        wake_at = min(self._next_change, self._next_check,
                      now + IDLE_DECISIONS * runtime.cfg.timing.interval)
        return max(0.0, wake_at - now) + WAKE_LATE_S

    def _after_pulse(self) -> None:
        """After each heartbeat (the timer woke the daemon anyway): look again at what the
        node knows. News wakes the decision; otherwise the decision's wait is moved to the
        new deadline, so an idle pair is not woken once more per period for nothing (the
        witness answers read with the heartbeat push their deadline on)."""
        runtime, waiting = self.runtime, self._waiting
        if runtime is None or waiting is None or self.lock.locked():
            return
        inputs = self.inputs(runtime)
        decision = decide(inputs)
        if (decision.target is not None or self.decision is None
                or decision.blockers != self.decision.blockers):
            self.wake()
            return
        self._next_change = self._deadline(inputs)
        loop = asyncio.get_running_loop()
        waiting.reschedule(loop.time() + self._wait_for(runtime, inputs.now))

    async def tick(self) -> None:
        """Decide and act in one step under the transition lock, so a decision is never
        taken on the half-done state of another transition (a switchover stopping units
        sets the role before it releases the node IP) and applied after it."""
        async with self.lock:
            runtime = self.runtime
            if runtime is None:
                return
            inputs = self.inputs(runtime)
            self._reserve_ahead(runtime)
            self.decision = decide(inputs)
            self._next_change = self._deadline(inputs)
            target = self.decision.target
            if target is not None:
                await self._transition(target, self.decision.reason,
                                       bump=self.decision.bump_epoch, fault=True)

    # --- transitions -----------------------------------------------------------------------

    async def transition(self, target: Role, reason: str, *, bump: bool = False,
                         release: bool = False) -> None:
        async with self.lock:
            await self._transition(target, reason, bump=bump, release=release)

    async def _transition(self, target: Role, reason: str, *, bump: bool = False,
                          release: bool = False, fault: bool = False) -> None:
        """``fault``: decided by the rules (isolation, two masters, a lease running out),
        not asked by an operator: a demoting master drops the node IP before it stops its
        units, since the peer may take over at any moment (fail closed). An operator's
        demotion stops the units first and the peer waits to be told."""
        runtime = self.runtime
        if runtime is None or target is self.role:
            return
        self.in_transition = {"from": self.role.value, "to": target.value, "reason": reason,
                              "time": self.wall()}
        try:
            await self._transition_steps(runtime, target, reason, bump=bump, release=release,
                                         fault=fault)
        finally:
            self.in_transition = None

    async def _transition_steps(self, runtime: Runtime, target: Role, reason: str, *,
                                bump: bool, release: bool, fault: bool) -> None:
        old = self.role
        steps: list[str] = []
        started = self.clock()
        if target is Role.MASTER:
            try:
                steps += await self._promote(runtime, bump)
            except PromotionFailed as exc:
                steps += [f"PROMOTING failed: {exc.reason.text}", *await self._release_ip()]
                self.role = old if old is not Role.MASTER else Role.SLAVE
                await self._save_quietly()
                self._hold_promotions(exc.reason)
                await self._record(old, self.role, f"promotion failed: {exc.reason.text}",
                                   steps, self.clock() - started)
                return
            self.promote_held, self.promote_after = None, float("-inf")
        else:
            if old is Role.MASTER and fault:
                steps += await self._release_ip()
                steps += await self._freeze_database()
                steps += await self._demote_units(old, target)
            elif old is Role.MASTER:
                # no write is acknowledged from here on: the position it stops at goes in
                # the release, for the new master to wait for
                steps += await self._freeze_database()
                steps += await self._demote_units(old, target)
                steps += await self._release_ip()
            self.role = target
            if release:
                # a hand-over: the peer first (the node IP is gone, it takes over now), then
                # the role on disk, which the takeover does not wait for; the lease goes
                # back to the arbiter so the new master gets it at its first ask
                runtime.give_up_lease()
                for _ in range(3):
                    runtime.send(Kind.RELEASE)
                steps.append("told the peer to take over")
                await self._save_quietly()
            else:
                # the role on disk first: a node set off stays off across a restart
                await self._save_quietly()
                runtime.announce_now()
                steps.append("told the peer")
            if old is not Role.MASTER:
                steps += await self._run_hooks(old, target)
        await self._record(old, target, reason, steps, self.clock() - started)

    def _hold_promotions(self, reason: Reason) -> None:
        """No new attempt for a while; the reason is a blocker meanwhile, and an event the
        first time it happens (the next attempts only try again, quietly)."""
        if self.promote_held != reason:
            self.events.emit("ha.promotion-failed",
                             f"{reason.text}; next attempt in {PROMOTE_HOLD_S:.0f} s",
                             level=logging.ERROR)
        self.promote_held = reason
        self.promote_after = self.clock() + PROMOTE_HOLD_S

    async def _promote(self, runtime: Runtime, bump: bool) -> list[str]:
        old = self.role
        # the new epoch must be on disk before anything is taken (a master must never
        # forget its epoch): reserved ahead it already is, and nothing waits for the disk;
        # otherwise it is written first, and a disk that refuses it stops the promotion
        # before any node IP is taken or announced
        epoch = self._next_epoch(runtime) if bump else self.persisted.epoch
        if epoch > self._on_disk.reserved:
            try:
                await self._write_state(Persisted(epoch, Role.MASTER, epoch))
            except OSError as exc:
                raise PromotionFailed(Reason(
                    "state-unsaved", f"the pair's state cannot be saved "
                    f"({os.strerror(exc.errno or 0)}): not taking the node IP")) from exc
            steps = [f"PROMOTING: epoch {epoch} saved"]
        else:
            steps = [f"PROMOTING: epoch {epoch} (reserved ahead)"]
        self.persisted = Persisted(epoch, Role.MASTER, max(epoch, self._on_disk.reserved))
        steps.append("PROMOTING: taking the node IP")
        try:
            # each address is added and then seen in the kernel's own listing (or was
            # there already) before this returns: no second listing on the takeover's path
            steps += await runtime.node_ip.take()
        except (VoxnodeError, OSError) as exc:
            text = exc.message if isinstance(exc, VoxnodeError) else str(exc)
            raise PromotionFailed(Reason("node-ip-refused", f"the node IP cannot be added: "
                                         f"{text}")) from exc
        self.holds_vip = bool(runtime.cfg.shared_ips)
        self.role = Role.MASTER
        runtime.node_ip.announce()
        steps.append("PROMOTING: announced the node IP")
        runtime.announce_now()
        if self._announcer is not None:
            self._announcer.cancel()
        self._announcer = asyncio.create_task(self._repeat_announce(runtime))
        peer = runtime.peer.view
        handed_over = peer is not None and peer.released_at is not None
        runtime.take_release()
        steps.append(f"PROMOTING: master with epoch {epoch}")
        if self._on_disk.role is not Role.MASTER or self._on_disk.epoch != epoch:
            self._spawn(self._save_in_background())
        if self.database is not None:
            # writable before the PBX starts: after a switchover once the old master's last
            # transaction is applied (else the role goes back: nothing acknowledged may be
            # lost to a planned switchover), after a crash once the relay log is
            try:
                steps += await self.database.promote(peer, switchover=handed_over)
            except SwitchoverIncomplete as exc:
                raise PromotionFailed(Reason("database-behind", str(exc))) from exc
        steps += await self._run_hooks(old, Role.MASTER)
        return steps

    async def _repeat_announce(self, runtime: Runtime) -> None:
        begun = self.clock()
        for at in GARP_REPEATS[1:]:
            await asyncio.sleep(max(0.0, begun + at - self.clock()))
            if self.runtime is not runtime or self.role is not Role.MASTER:
                return
            with contextlib.suppress(VoxnodeError, OSError):
                runtime.node_ip.announce()

    async def _demote_units(self, old: Role, new: Role) -> list[str]:
        # units first: the PBX must stop answering before the address can move; no
        # election win while they stop (the peer is about to take over)
        if self.runtime is not None:
            self.hold_off_until = self.clock() + 2 * self.runtime.cfg.timing.dead
        self.role = new
        return await self._run_hooks(old, new, prefix="DEMOTING")

    async def _release_ip(self) -> list[str]:
        runtime = self.runtime
        if runtime is None:
            return []
        steps = ["DEMOTING: releasing the node IP", *await runtime.node_ip.release()]
        self.holds_vip = False
        self.hold_off_until = self.clock() + 2 * runtime.cfg.timing.dead
        return steps

    async def _freeze_database(self) -> list[str]:
        """No more writes leave this node: the database frozen, every file push ended."""
        steps = await self.file_sync.stop_pushes() if self.file_sync is not None else []
        if self.database is None:
            return steps
        return steps + await self.database.freeze()

    async def _release(self, reason: str) -> None:
        old = self.role
        steps = await self._freeze_database()
        steps += await self._demote_units(old, Role.SLAVE)
        steps += await self._release_ip()
        if self.runtime is not None:
            self.runtime.give_up_lease()
            self.runtime.send(Kind.RELEASE)
        await self._save_quietly()
        await self._record(old, Role.SLAVE, reason, steps, 0.0)

    async def ensure_node_ip(self) -> None:
        """While master, put back a node IP that something removed (and say so)."""
        async with self.lock:
            runtime = self.runtime
            if runtime is None or self.role is not Role.MASTER:
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
            if runtime is None or self.role is Role.MASTER:
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

    def _next_epoch(self, runtime: Runtime) -> int:
        """Above every epoch seen in the pair, so a later two-masters meeting keeps us."""
        view = runtime.peer.view
        return max(self.persisted.epoch, view.epoch if view is not None else 0) + 1

    async def _write_state(self, wanted: Persisted) -> None:
        """The one writer of the pair's state file (fsync, in a worker thread: on a busy
        disk it can take longer than the dead interval, and the heartbeats share this
        loop). Writes never lower the epoch or the reservation on disk."""
        async with self._save_lock:
            body = Persisted(max(wanted.epoch, self._on_disk.epoch), wanted.role,
                             max(wanted.reserved, self._on_disk.reserved, wanted.epoch))
            await durable(self.store.save, body)
            self._on_disk = body

    def _reserve_ahead(self, runtime: Runtime) -> None:
        """Write the next epoch ahead, off the promotion's path, when it grew."""
        wanted = self._next_epoch(runtime)
        if wanted <= self._on_disk.reserved or self._reserving:
            return
        self._reserving = True

        async def reserve() -> None:
            try:
                await self._write_state(Persisted(self.persisted.epoch, self.role, wanted))
            except OSError as exc:
                self.events.emit("ha.state-unsaved", f"the next epoch cannot be reserved "
                                 f"({os.strerror(exc.errno or 0)}): a takeover will have to "
                                 "write it first", level=logging.WARNING)
            finally:
                self._reserving = False
        self._spawn(reserve())

    async def _save_in_background(self) -> None:
        try:
            await self._write_state(Persisted(self.persisted.epoch, self.role,
                                              self.persisted.reserved))
        except OSError as exc:
            self.events.emit("ha.state-unsaved", f"the pair's role cannot be saved "
                             f"({os.strerror(exc.errno or 0)}); the epoch is: the node keeps "
                             "serving", level=logging.ERROR)

    async def _save_quietly(self) -> None:
        """Save the role after a demotion: it is done whatever the disk says (an event
        tells when the disk refused)."""
        self.persisted = Persisted(self.persisted.epoch, self.role, self.persisted.reserved)
        try:
            await self._write_state(self.persisted)
        except OSError as exc:
            self.events.emit("ha.state-unsaved", f"the pair's state cannot be saved: "
                             f"{os.strerror(exc.errno or 0)}", level=logging.ERROR)

    async def _record(self, old: Role, new: Role, reason: str, steps: list[str],
                      took: float) -> None:
        self.last_transition = {
            "from": old.value, "to": new.value, "reason": reason, "time": self.wall(),
            "epoch": self.persisted.epoch, "steps": steps, "took_ms": round(took * 1000),
        }
        self.events.emit("ha.transition", f"{old.value} → {new.value}: {reason}")
        self.wake()  # the new role has rules of its own: decide again
        if self.database is not None:
            self.database.wake()
        if self.file_sync is not None:
            self.file_sync.wake()
        try:
            await asyncio.to_thread(self.store.append_event, self.last_transition)
        except OSError as exc:
            log.error("cannot append to the pair's event log: %s", exc.strerror)

    # --- operator control ------------------------------------------------------------------

    async def set_state(self, target: Role, *, force: bool = False) -> None:
        """The operator's STATE control; ``force``: take the role although the master's
        database replication was asynchronous (acknowledged transactions may be lost)."""
        runtime = self._running()
        peer = runtime.peer.view
        alive = runtime.peer_alive(self.clock())
        if target is Role.MASTER and alive and peer is not None and peer.role is Role.MASTER:
            raise Conflict(f"the peer {peer.node_id} is master",
                           remedy="Run `voxnode ha switchover` on it, or set it off first.")
        if target is Role.MASTER and self.full_sync.running is not None:
            raise Conflict(f"a full sync is running on this node (job "
                           f"{self.full_sync.running}): its data is half-copied",
                           remedy=f"Cancel it first (voxnode jobs cancel "
                           f"{self.full_sync.running}), then add --force to take the risk.")
        risk = self._data_risk(runtime)
        if target is Role.MASTER and risk is not None and not force and self.role is not (
                Role.MASTER):
            raise Conflict(risk.text, remedy="Add --force to take the role and the risk.")
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
        peer = runtime.peer.view
        if peer is None or not runtime.peer_alive(self.clock()):
            raise Conflict("the peer is unreachable: nobody would take over",
                           remedy="Check `voxnode ha status` on both nodes.")
        if peer.role is Role.OFF:
            raise Conflict("the peer is off: set it to slave first")
        blocked = (DatabaseReplication.switchover_blocker(peer) if self.database is not None
                   else None)
        if blocked is not None:
            raise Conflict(blocked, remedy="Wait until `voxnode replication status` on the "
                           "peer says replicating, then switch over.")
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

    def summary(self) -> dict[str, Any]:
        """The pair at a glance (``pair`` of ``/v1/status``): whether failover runs, this
        node's role, the peer and its role, who holds the node IP, what stops it."""
        runtime = self.runtime
        if runtime is None:
            return {"enabled": self.config.enabled, "running": False,
                    "role": None, "peer": None, "peer_role": None,
                    "node_ip_holder": None, "problem": self.problem}
        now = runtime.clock()
        view = runtime.peer.view
        alive = runtime.peer_alive(now)
        return {
            "enabled": self.config.enabled,
            "running": True,
            "role": self.role.value,
            "peer": str(runtime.cfg.peer_ip),
            "peer_role": view.role.value if alive and view is not None else None,
            "node_ip_holder": self._holder(alive, view, runtime),
            "problem": self.problem,
        }

    def _holder(self, alive: bool, peer: Any, runtime: Any) -> str:
        if self.holds_vip:
            return "this node"
        if alive and peer is not None and peer.holds_vip:
            return "peer"
        return "nobody" if alive or not runtime.cfg.shared_ips else "unknown"

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
            "pair_key": self.key_installed,
            "last_transition": self.last_transition,
            "transition_in_progress": self.in_transition,
        }
        if runtime is None:
            out["failover_blockers"] = ([Reason("not-running", self.problem).to_dict()]
                                        if self.problem else [])
            out["health"] = []
            return out
        inputs = self.inputs(runtime)
        now = inputs.now
        decision = decide(inputs)
        peer = runtime.peer.view
        alive = runtime.peer_alive(now)
        out.update({
            "node_id": runtime.cfg.node_id,
            "timing_ms": runtime.cfg.timing.to_dict(),
            "peer": runtime.status(now),
            "node_ip": [
                {"address": str(s.address), "interface": s.interface, "primary": s.primary}
                for s in runtime.cfg.shared_ips
            ],
            "node_ip_holder": self._holder(alive, peer, runtime),
            "witnesses": runtime.witness.details(now) if runtime.witness else [],
            "arbiter": runtime.arbiter.status(now) if runtime.arbiter else None,
            "decision": decision.reason,
            "failover_blockers": [r.to_dict() for r in decision.blockers],
            "health": [r.to_dict() for r in [
                *runtime.health(now),
                *(self.database.health() if self.database is not None else []),
                *[r for r in (self.marker.reason(),) if r is not None],
                *(self.file_sync.health() if self.file_sync is not None else [])]],
            "database": self.database.to_dict() if self.database is not None else None,
            "next_step": cloud_next_step(self.role, peer.role if alive and peer else None)
            if runtime.cfg.cloud else None,
        })
        return out

    def replication_status(self) -> dict[str, Any]:
        """``/v1/replication``: each stream (the database; file paths to come) with its
        state, lag and last error, and whether a full sync is needed."""
        cfg = self.config.replication
        database: dict[str, Any]
        if self.database is not None:
            database = self.database.to_dict()
        else:
            why = ("ha.replication.database.engine is none" if cfg.database.engine.value
                   == "none" else "fault tolerance is not running on this node"
                   if self.runtime is None else "not started")
            database = {"engine": cfg.database.engine.value, "state": "off", "detail": why}
        return {
            "role": self.role.value if self.runtime is not None else None,
            "database": database,
            "paths": (self.file_sync.to_dict() if self.file_sync is not None else
                      [{"path": p, "state": "off", "error": None} for p in cfg.paths]),
            "bandwidth_kb": cfg.bandwidth_kb,
            "max_lag_s": cfg.max_lag_s,
            "needs_full_sync": bool(database.get("needs_full_sync"))
            or self.marker.needed is not None,
            "full_sync": {"needed": self.marker.needed, "running_job": self.full_sync.running},
        }

    async def recent_events(self, limit: int = 100) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.events, limit)


def key_parties(arbiter: bool) -> frozenset[str]:
    """Who must show it has a new pair key before the previous one goes."""
    return frozenset({"peer", "arbiter"} if arbiter else {"peer"})


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
