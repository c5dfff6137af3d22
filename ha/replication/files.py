"""The file half of replication: the master pushes each replicated path to the slave.

``FileSync`` is owned by ``ha.manager.HAManager`` while the pair runs with paths in
``ha.replication.paths``:

- ``prepare`` writes the transport's files (``ha.replication.sshkeys``): for this node as a
  receiver, the sync daemon's configuration, host key and the authorized keys (one per
  path, from the peer only, writing that path only); for this node as a sender, the client
  key of each path and the peer's pinned host key. They derive from the pair key.
- While this node is master and the peer is heard as slave, inotify watches every
  directory of every path (``CLOSE_WRITE``, creations, deletions, moves, attribute
  changes): an event marks its path dirty, and a dirty path is pushed after a short batch
  window with ``rsync -a --delete --bwlimit`` over the sync daemon; a path dirtied during
  its push is pushed again. Every ``RECONCILE_S`` each path is pushed whole, so an event
  missed (a queue overflow, the watch limit, a file changed while the agent was down) is
  caught up. A node that is not master never pushes.
- ``stop_pushes`` (the manager calls it before a demoted master lets the role go) ends any
  push under way, so a late transfer never lands on the new master.
- ``to_dict`` is each path's state for ``replication status``; each change is an event.

The sync daemon itself (``sshd -f``) is a unit of the node (``voxnode-sync-sshd.service``);
the agent writes its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from asyncinotify import Inotify, Mask

from agent.errors import VoxnodeError
from agent.events import EventLog
from agent.ports.files import FileTree
from agent.ports.systemd import SystemdPort
from agent.state.model import DatabaseEngine, DesiredState
from ha.config import ha_management_ip
from ha.machine import PeerView, Reason
from ha.protocol import Role
from ha.replication import sshkeys, syncshell

log = logging.getLogger("voxnode.ha.files")

BATCH_S = 0.1  # events within this window go in one push
EVENT_QUEUE = 10_000  # events waiting for the loop; past this, every path is pushed whole
RECONCILE_S = 60.0
PUSH_TIMEOUT_S = 3600.0
WATCH_MASK = (Mask.CLOSE_WRITE | Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO
              | Mask.ATTRIB | Mask.DELETE_SELF | Mask.ONLYDIR | Mask.DONT_FOLLOW)
RSYNC = "/usr/bin/rsync"
RECEIVER_UNIT = "voxnode-sync-sshd.service"
SSH = "/usr/bin/ssh"

IP = IPv4Address | IPv6Address


@dataclass(frozen=True)
class FileSettings:
    paths: tuple[str, ...]
    own: IP
    peer: IP
    bandwidth_kb: int
    # the database's socket when the pair replicates one: its full sync reads it through
    # the sync daemon too
    database_socket: str | None = None

    @classmethod
    def from_state(cls, state: DesiredState) -> FileSettings | None:
        """The sync daemon and its keys: wanted when the pair replicates paths or a
        database (a full sync of either goes through it)."""
        ha = state.ha
        own = ha_management_ip(state)
        database = (ha.replication.database.socket
                    if ha.replication.database.engine is DatabaseEngine.MARIADB else None)
        if not ha.enabled or ha.peer is None or own is None or not (
                ha.replication.paths or database):
            return None
        return cls(tuple(ha.replication.paths), own, ha.peer, ha.replication.bandwidth_kb,
                   database)


@dataclass
class PathState:
    path: str
    state: str = "idle"  # idle (not master), pending, pushing, synced, paused, failing
    dirty: bool = False
    pushes: int = 0
    last_push: float | None = None  # wall clock of the last push that succeeded
    last_push_ms: int | None = None
    bytes_sent: int = 0
    error: str | None = None
    watching: int = 0  # directories under inotify watch
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "state": self.state, "pending": self.dirty,
                "pushes": self.pushes, "last_push": self.last_push,
                "last_push_ms": self.last_push_ms, "error": self.error,
                "watched_directories": self.watching}


class FileSync:
    def __init__(self, settings: FileSettings, pair_key: Callable[[], bytes], events: EventLog,
                 *, files: FileTree | None = None, systemd: SystemdPort | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.systemd = systemd  # a real node's: runs the sync daemon (RECEIVER_UNIT)
        self.files = files or FileTree(Path("/"))
        self._pair_key = pair_key
        self.events = events
        self.wall = wall
        self.paths = {p: PathState(p) for p in settings.paths}
        self._view: Callable[[], tuple[Role, PeerView | None, bool]] = (
            lambda: (Role.INIT, None, False))
        self._task: asyncio.Task[None] | None = None
        self._pushing: dict[str, asyncio.subprocess.Process] = {}
        self._wake = asyncio.Event()

    # --- files ---------------------------------------------------------------------------

    def host(self, node_path: str) -> str:
        return str(self.files.path(node_path))

    def shell(self) -> tuple[str, str]:
        """The interpreter and the sync shell the forced commands run: the package's, or
        (a development tree: the lab, the tests) this source tree's."""
        python = next((p for p in sshkeys.PYTHONS if os.path.exists(p)), sshkeys.PYTHONS[-1])
        shell = sshkeys.SYNC_SHELL
        if not os.path.exists(shell):
            shell = str(Path(syncshell.__file__).resolve())
        return python, shell

    def _write_files(self, key: bytes) -> list[str]:
        """Blocking: in a worker thread."""
        s = self.settings
        done = []
        host_private, _ = sshkeys.host_key(key)
        python, shell = self.shell()
        socket = self.host(s.database_socket) if s.database_socket else None
        wanted: list[tuple[str, str | bytes, int]] = [
            (sshkeys.SSHD_CONFIG, sshkeys.render_sshd_config(
                s.own, host_key=self.host(sshkeys.HOST_KEY),
                authorized_keys=self.host(sshkeys.AUTHORIZED_KEYS)), 0o644),
            (sshkeys.AUTHORIZED_KEYS, sshkeys.render_authorized_keys(
                key, s.peer, list(s.paths), {p: self.host(p) for p in s.paths},
                database_socket=socket, python=python, shell=shell,
                pause=self.host(sshkeys.PAUSE_FILE)), 0o600),
            (sshkeys.KNOWN_HOSTS, sshkeys.render_known_hosts(key, s.peer), 0o644),
        ]
        for node_path, content, mode in wanted:
            if self.files.write_if_changed(node_path, content, mode):
                done.append(f"wrote {node_path}")
        # private keys: the files carry a random check word, so they are compared by
        # their public half and written only when the pair key (or the path) changed
        if self._public_of(sshkeys.HOST_KEY) != sshkeys.host_key(key)[1]:
            self.files.write_if_changed(sshkeys.HOST_KEY, host_private, 0o600)
            done.append(f"wrote the sync daemon's host key {sshkeys.HOST_KEY}")
        for target, private, public in sshkeys.client_keys(key, list(s.paths),
                                                           s.database_socket is not None):
            if self._public_of(target) != public:
                self.files.write_if_changed(target, private, 0o600)
                done.append(f"wrote the sync key {target}")
        return done

    def _public_of(self, node_path: str) -> str | None:
        data = self.files.read(node_path + ".pub")
        return data.decode().strip() if data else None

    async def prepare(self) -> list[str]:
        key = self._pair_key()
        done = await asyncio.to_thread(self._write_files, key)
        # the public halves, to compare with next time (and for an operator to read)
        await asyncio.to_thread(self._write_publics, key)
        if self.systemd is not None and done:
            try:  # (re)started: it reads its keys and configuration at start
                await self.systemd.restart(RECEIVER_UNIT)
                done.append(f"restarted {RECEIVER_UNIT}")
            except VoxnodeError as exc:
                done.append(f"{RECEIVER_UNIT} did not start: {exc.message}")
                self.events.emit("replication.files-receiver", exc.message,
                                 level=logging.ERROR)
        return done

    async def dissolve(self) -> list[str]:
        """The pair no longer syncs files: the receiver stops."""
        await self.stop()
        if self.systemd is None:
            return []
        try:
            await self.systemd.stop(RECEIVER_UNIT)
        except VoxnodeError as exc:
            return [f"{RECEIVER_UNIT} did not stop: {exc.message}"]
        return [f"stopped {RECEIVER_UNIT}"]

    def _write_publics(self, key: bytes) -> None:
        self.files.write_if_changed(sshkeys.HOST_KEY + ".pub", sshkeys.host_key(key)[1] + "\n")
        for target, _, public in sshkeys.client_keys(key, list(self.settings.paths),
                                                     self.settings.database_socket is not None):
            self.files.write_if_changed(target + ".pub", public + "\n")

    # --- following the role ----------------------------------------------------------------

    def start(self, view: Callable[[], tuple[Role, PeerView | None, bool]]) -> None:
        self._view = view
        self._task = asyncio.create_task(self._run(), name="ha-files")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await self.stop_pushes()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _sending(self) -> bool:
        role, peer, alive = self._view()
        return role is Role.MASTER and alive and peer is not None and peer.role is Role.SLAVE

    async def _run(self) -> None:
        while True:
            if self._sending():
                try:
                    await self._send_while_master()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("file sync")
                    await asyncio.sleep(1.0)
            else:
                for state in self.paths.values():
                    state.state = "idle"
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()

    async def _send_while_master(self) -> None:
        with Inotify() as inotify:
            watched: dict[str, str] = {}  # watch path -> replicated path
            for path in self.settings.paths:
                await self._watch_tree(inotify, path, watched)
                self._dirty(self.paths[path])  # a first push of everything
            pushers = [asyncio.create_task(self._pusher(self.paths[p]), name=f"push {p}")
                       for p in self.settings.paths]
            # one reader drains inotify into a queue: waiting on the queue with a time
            # limit is safe, cancelling a read of the inotify object itself loses events
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=EVENT_QUEUE)
            overflow = asyncio.Event()
            reader = asyncio.create_task(_read_events(inotify, queue, overflow),
                                         name="ha-files-inotify")
            pushers.append(reader)
            try:
                reconcile_at = time.monotonic() + RECONCILE_S
                while self._sending():
                    try:
                        async with asyncio.timeout(min(1.0, max(0.0, reconcile_at
                                                                - time.monotonic()))):
                            event = await queue.get()
                    except TimeoutError:
                        event = None
                    if overflow.is_set():
                        overflow.clear()
                        for state in self.paths.values():
                            self._dirty(state)
                    if event is None:
                        if time.monotonic() >= reconcile_at:
                            reconcile_at = time.monotonic() + RECONCILE_S
                            for state in self.paths.values():
                                self._dirty(state)
                        continue
                    await self._on_event(inotify, event, watched)
            finally:
                for task in pushers:
                    task.cancel()
                for task in pushers:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await self.stop_pushes()

    async def _watch_tree(self, inotify: Inotify, path: str, watched: dict[str, str],
                          top: str | None = None) -> None:
        """Watch every directory of replicated ``path`` (or of ``top``, a directory in it
        that just appeared, and whatever was made in it before the watch)."""
        directories = await asyncio.to_thread(_directories, top or self.host(path))
        state = self.paths[path]
        for i, directory in enumerate(directories):
            try:
                inotify.add_watch(directory, WATCH_MASK)
                watched[directory] = path
            except OSError as exc:  # ENOSPC: the watch limit; the reconcile still runs
                state.error = (f"cannot watch {directory}: {os.strerror(exc.errno or 0)} "
                               "(raise fs.inotify.max_user_watches); changes there are "
                               f"pushed every {RECONCILE_S:g} s")
                break
            if i % 200 == 199:
                await asyncio.sleep(0)  # thousands of directories: others get the loop too
        state.watching = sum(1 for p in watched.values() if p == path)

    async def _on_event(self, inotify: Inotify, event: Any, watched: dict[str, str]) -> None:
        if event.mask & Mask.Q_OVERFLOW:
            for state in self.paths.values():
                self._dirty(state)
            return
        if event.watch is None or event.path is None:
            return
        parent = str(event.watch.path)
        path = watched.get(parent)
        if path is None:
            return
        if event.mask & Mask.ISDIR and event.mask & (Mask.CREATE | Mask.MOVED_TO):
            await self._watch_tree(inotify, path, watched, top=str(event.path))
        self._dirty(self.paths[path])

    def _dirty(self, state: PathState) -> None:
        state.dirty = True
        if state.state in ("idle", "synced"):
            state.state = "pending"
        state.wake.set()

    async def _pusher(self, state: PathState) -> None:
        while True:
            await state.wake.wait()
            await asyncio.sleep(BATCH_S)
            state.wake.clear()
            if not state.dirty:
                continue
            state.dirty = False
            state.state = "pushing"
            started = time.monotonic()
            error = await self._push(state.path)
            if error is None:
                state.pushes += 1
                state.last_push = self.wall()
                state.last_push_ms = round((time.monotonic() - started) * 1000)
                if state.error is not None:
                    self.events.emit("replication.files-recovered",
                                     f"{state.path}: pushed to {self.settings.peer} again")
                state.error = None
                state.state = "pending" if state.dirty else "synced"
            elif syncshell.PAUSED in error:
                # the slave runs a full sync of its own (pulling this tree): not a fault
                if state.state != "paused":
                    self.events.emit("replication.files-paused", f"{state.path}: the peer "
                                     "runs a full sync; pushes wait for its end")
                state.state, state.error = "paused", None
                state.dirty = True
                await asyncio.sleep(2.0)
                state.wake.set()
            else:
                if state.error != error:
                    self.events.emit("replication.files-failing", f"{state.path}: {error}",
                                     level=logging.ERROR)
                state.error, state.state = error, "failing"
                state.dirty = True  # tried again after a pause
                await asyncio.sleep(2.0)
                state.wake.set()

    def ssh_command(self, key_file: str) -> list[str]:
        """ssh to the peer's sync daemon with one of this node's client keys, the daemon's
        host key pinned."""
        return [
            SSH, "-i", self.host(key_file), "-p", str(sshkeys.SYNC_PORT),
            "-o", f"UserKnownHostsFile={self.host(sshkeys.KNOWN_HOSTS)}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=2",
        ]

    def remote(self, path: str = "") -> str:
        """The peer as rsync names it (the path is the sync shell's to choose: ``.``)."""
        peer = self.settings.peer
        return (f"root@[{peer}]:" if peer.version == 6 else f"root@{peer}:") + path

    def rsync_command(self, path: str) -> list[str]:
        s = self.settings
        # -rlptgo: -a without devices and special files (the receiver refuses them)
        return [RSYNC, "-rlptgo", "--delete", "--partial-dir=.voxnode-partial",
                f"--bwlimit={s.bandwidth_kb}",
                "-e", " ".join(self.ssh_command(sshkeys.path_key_file(path))),
                self.host(path) + "/", self.remote()]

    async def _push(self, path: str) -> str | None:
        """One rsync of ``path`` to the peer: None, or what went wrong (an operator
        sentence with rsync's own last words)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.rsync_command(path), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)
        except OSError as exc:
            return f"rsync cannot run: {exc.strerror}"
        self._pushing[path] = proc
        try:
            async with asyncio.timeout(PUSH_TIMEOUT_S):
                _, err = await proc.communicate()
        except TimeoutError:
            kill_group(proc)
            await proc.wait()
            return f"the push took longer than {PUSH_TIMEOUT_S:g} s"
        finally:
            self._pushing.pop(path, None)
        if proc.returncode == 0:
            return None
        return f"rsync exited {proc.returncode}" + (
            f": {last_words(err)}" if err and err.strip() else "")

    async def stop_pushes(self) -> list[str]:
        """End every push under way (a master giving the role up): none lands later."""
        stopped = []
        for path, proc in list(self._pushing.items()):
            kill_group(proc)
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
            stopped.append(f"files: stopped the push of {path}")
        return stopped

    def to_dict(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.paths.values()]

    def health(self) -> list[Reason]:
        found = [Reason("files-failing", f"File sync of {s.path}: {s.error}")
                 for s in self.paths.values() if s.error is not None]
        paused = [s.path for s in self.paths.values() if s.state == "paused"]
        if paused:
            found.append(Reason("files-paused", f"File sync of {', '.join(paused)} paused: the "
                                f"peer {self.settings.peer} runs a full sync (or a pause left "
                                "by one that stopped: its agent lifts it when it starts)"))
        return found


async def _read_events(inotify: Inotify, queue: asyncio.Queue[Any],
                       overflow: asyncio.Event) -> None:
    """Every inotify event into ``queue``; an event that finds the queue full (a flood of
    changes) is dropped and ``overflow`` set: every path is then pushed whole."""
    async for event in inotify:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            overflow.set()


def kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a process started in a session of its own, with all it started (ssh, the
    rsync under it); one already reaped is left alone (its group id may be reused)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def last_words(err: bytes) -> str:
    """The last line a program wrote on its standard error, cut for an operator's sentence."""
    lines = [line for line in err.decode(errors="replace").strip().splitlines() if line]
    return lines[-1][:300] if lines else "no message"


def _directories(root: str) -> list[str]:
    """Every directory under ``root`` (itself first), not following links."""
    found = [root]
    for current, dirs, _ in os.walk(root, followlinks=False):
        found += [os.path.join(current, d) for d in dirs
                  if not os.path.islink(os.path.join(current, d))]
    return found
