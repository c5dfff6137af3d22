"""The forced full sync ("All"): the slave copies the master's database and files whole.

The last step of pairing, and the way back for a slave that cannot replicate (a diverged
old master, a copy cancelled half-way). It runs on the slave as a job of the job runner
(``full-sync``, parameter ``what``: ``all``, ``db`` or ``files``), in four steps:

1. **check**: this node is not master, the peer is a live master; what the master holds is
   measured (its databases' size over the sync daemon, ``voxnode-db info``; the bytes each
   path would move, an rsync dry run) and the steps are weighed by those bytes, so the
   job's progress follows the bytes moved. From here the node is marked "needs full sync"
   (``SyncMarker``, kept under the state directory) until the last step: a cancelled,
   failed or interrupted copy leaves it marked, never half-trusted.
2. **database**: the follower stands still and replication stops; the master's dump
   (``mariadb-dump --single-transaction --gtid``: one consistent snapshot and its GTID
   position) streams over the sync daemon into this node's server, without going to its
   binary log, at most ``bandwidth_kb``. Databases only this node has are saved under the
   state directory first, then dropped. Each table's rows are counted in the stream and
   in the server after the import; they must match. Then this node's binary log is
   emptied and replication goes on from the snapshot's position.
3. **files**: the master's pushes to this node pause (``sshkeys.PAUSE_FILE``); each path
   is pulled with ``rsync --delete --bwlimit`` (``--info=progress2`` for the bytes); then
   its file count, bytes and directories are compared with the master's (``voxnode-stat``),
   with up to two more passes for files that changed meanwhile.
4. **verify**: both parts verified: the mark goes, an event says what was copied.

Cancelling the job (``voxnode jobs cancel``) stops the transfer at once and kills its
processes; the mark stays. Byte pumping, line counting and tree walks run in worker
threads: the event loop carries the heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import Conflict, InvalidInput, Problem, VoxnodeError
from agent.events import EventLog
from agent.jobs.runner import JobKind, StepContext, StepDef, StepSkipped
from agent.ports.files import atomic_write, create_new, durable, fsync_dir, fsync_file
from ha.machine import PeerView, Reason
from ha.protocol import Role
from ha.replication import sshkeys, syncshell
from ha.replication.database import DatabaseReplication
from ha.replication.files import RSYNC, FileSync, kill_group, last_words
from ha.replication.gtid import BadPosition, ahead_of, describe, parse_position
from ha.replication.mariadb import DatabaseError, count_rows, quote_name, user_databases

log = logging.getLogger("voxnode.ha.fullsync")

FULL_SYNC = "full-sync"
WHAT = ("all", "db", "files")
MARKER = "full-sync.json"
MARIADB = "/usr/bin/mariadb"
MARIADB_DUMP = "/usr/bin/mariadb-dump"
CHUNK = 64 * 1024
REPORT_S = 0.5
MEASURE_TIMEOUT_S = 120.0
FILE_PASSES = 3
# lines the mariadb client would take as its own commands (a shell, a file read, output to
# a file), where a statement would start: never from a dump of ours (the client runs with
# --binary-mode and --sandbox as well)
_CLIENT_COMMAND = re.compile(rb"^\s*(\\|(system|source|tee|pager|connect|edit|warnings|"
                             rb"nowarning|nopager|notee|prompt|rehash|charset)\b)", re.I)
# what a dump's line is when it starts a statement (never inside one: a quoted name or a
# routine's body can hold a newline and anything after it)
_INSERT = re.compile(rb"^INSERT INTO `((?:[^`]|``)+)`(?: \(.*?\))? VALUES")
_CREATE = re.compile(rb"^CREATE TABLE `((?:[^`]|``)+)` \(")
_USE = re.compile(rb"^USE `((?:[^`]|``)+)`;")
_GTID = re.compile(rb"^-- SET GLOBAL gtid_slave_pos='([0-9,-]*)';")
_TOTAL = re.compile(r"Total transferred file size: ([\d,.]+)")
_PROGRESS = re.compile(r"^\s*([\d,]+)\s+\d+%")

View = Callable[[], tuple[Role, PeerView | None, bool]]


class FullSyncFailed(VoxnodeError):
    pass


# --- the mark ---------------------------------------------------------------------------


PARTS = ("db", "files")


class SyncMarker:
    """Whether this node needs a full sync, of what and why; kept in ``state_dir/ha``:
    ``{"reason", "since", "parts": ["db", "files"], "database_incomplete": bool}``. A part
    leaves the mark only when a copy of that part succeeds; the mark goes with the last."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "ha" / MARKER
        self.needed: dict[str, Any] | None = None

    def load(self) -> None:
        """Blocking: at start, in a worker thread. A mark that cannot be read counts as
        a mark of everything, the database included."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            self.needed = None
            return
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict):
            data = {"reason": f"{self.path} cannot be read: a full sync is needed"}
        parts = data.get("parts")
        if not isinstance(parts, list) or not set(parts) <= set(PARTS) or not parts:
            data["parts"] = list(PARTS)  # an older or damaged mark: everything
        if not isinstance(data.get("reason"), str):
            data["reason"] = "a full sync did not finish"
        data["database_incomplete"] = data.get("database_incomplete") is not False
        self.needed = data

    @property
    def parts(self) -> set[str]:
        return set(self.needed["parts"]) if self.needed else set()

    @property
    def database_incomplete(self) -> bool:
        return bool(self.needed and self.needed.get("database_incomplete"))

    async def need(self, parts: set[str], reason: str, *, database_incomplete: bool = False,
                   wall: float | None = None) -> None:
        """Mark ``parts`` as needed (with what was marked before: nothing is dropped)."""
        before = self.needed or {}
        data = {"reason": reason, "since": before.get("since", wall if wall is not None
                                                       else time.time()),
                "parts": sorted(self.parts | parts),
                "database_incomplete": database_incomplete or self.database_incomplete}
        self.needed = data
        await durable(self._write, json.dumps(data))

    async def done(self, parts: set[str]) -> set[str]:
        """``parts`` were copied and verified; what is still needed."""
        if self.needed is None:
            return set()
        left = self.parts - parts
        if not left:
            self.needed = None
            await durable(self._remove)
            return set()
        data = dict(self.needed, parts=sorted(left))
        if "db" in parts:
            data["database_incomplete"] = False
        self.needed = data
        await durable(self._write, json.dumps(data))
        return left

    def _write(self, text: str) -> None:
        atomic_write(self.path, text.encode())

    def _remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        fsync_dir(self.path.parent)

    def reason(self) -> Reason | None:
        if self.needed is None:
            return None
        what = " and ".join({"db": "the database", "files": "the files"}[p]
                            for p in PARTS if p in self.parts)
        return Reason("needs-full-sync", f"This node needs a full sync of {what}: "
                      f"{self.needed['reason']}; its data is not the master's "
                      "(`voxnode ha full-sync` on this node; `voxnode ha set-state master "
                      "--force` takes the risk)")


# --- the byte pump ------------------------------------------------------------------------


@dataclass
class DumpStats:
    """What the pump saw in the dump (written by its thread, read by the loop)."""

    bytes: int = 0
    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    position: str | None = None
    complete: bool = False
    refused: str | None = None
    error: str | None = None


class Limiter:
    """At most ``rate`` bytes a second, over the whole transfer."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def after(self, n: int, stop: threading.Event) -> None:
        self.sent += n
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            stop.wait(ahead)


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").replace("``", "`")


HOLD = 1024  # a partial line shorter than this waits for more before it is written
# the rest of a quoted name or string after its opening quote, up to its closing quote
_QUOTED = {b"`": re.compile(rb"(?:[^`]|``)*`"), b"'": re.compile(rb"(?:[^'\\]|\\.)*'"),
           b'"': re.compile(rb'(?:[^"\\]|\\.)*"')}
_OPENING = re.compile(rb"[^`'\"]*([`'\"])")


class DumpReader:
    """Where a dump's lines stand: inside a statement or between two, inside a quoted name
    or string or not, under which delimiter; what the statement-level lines say. Only a
    line that starts a statement is looked at: one inside a quoted name, a string or a
    routine's body (a newline is allowed there, and anything after it) is not."""

    def __init__(self, stats: DumpStats) -> None:
        self.stats = stats
        self.schema = ""
        self.quote: bytes | None = None  # the open quote, if any
        self.inside = False  # a statement began and did not end yet
        self.delimiter = b";"
        self.tail = b""  # the end of the line's unquoted text

    def _scan(self, text: bytes) -> None:
        pos = 0
        while True:
            if self.quote is not None:
                m = _QUOTED[self.quote].match(text, pos)
                if m is None:
                    self.tail = b""
                    return
                pos, self.quote = m.end(), None
            m = _OPENING.match(text, pos)
            if m is None:
                rest = text[pos:]
                if rest.strip():
                    self.tail = rest[-16:]
                elif pos:
                    self.tail = b"x"  # a quoted value ended the line: not a delimiter
                return
            self.quote, pos = m.group(1), m.end()

    def start(self, head: bytes) -> bool:
        """A line's start (the whole line, or its first HOLD bytes); False to refuse it."""
        self.tail = b""
        if self.inside or self.quote is not None:
            self._scan(head)
            return True
        stats = self.stats
        if not head.strip():
            return True
        if head.startswith(b"--"):  # a comment line between statements
            if head.startswith(syncshell.DUMP_DONE.encode()):
                stats.complete = True
            else:
                m = _GTID.match(head)
                if m:
                    stats.position = m.group(1).decode()
            return True
        if head.startswith(b"/*") and head.rstrip().endswith(b"*/") and b"*/" not in (
                head.rstrip()[2:-2]):
            return True  # a comment alone (the client's sandbox mark)
        stats.complete = False  # anything after the end mark: not the end
        if head.startswith(b"DELIMITER "):
            self.delimiter = head.split()[1] if len(head.split()) > 1 else b";"
            return True
        if _CLIENT_COMMAND.match(head):  # a client command where a statement would start
            stats.refused = head[:80].decode("utf-8", "replace")
            return False
        if self.delimiter == b";":
            if head.startswith(b"INSERT INTO `"):
                m = _INSERT.match(head)
                if m:
                    key = (self.schema, _name(m.group(1)))
                    stats.rows[key] = stats.rows.get(key, 0) + 1
            elif head.startswith(b"CREATE TABLE `"):
                m = _CREATE.match(head)
                if m:
                    stats.rows.setdefault((self.schema, _name(m.group(1))), 0)
            elif head.startswith(b"USE `"):
                m = _USE.match(head)
                if m:
                    self.schema = _name(m.group(1))
        self.inside = True
        self._scan(head)
        return True

    def more(self, piece: bytes) -> None:
        """More of a long line whose start was looked at."""
        self._scan(piece)

    def end_line(self) -> None:
        if self.inside and self.quote is None and self.tail.rstrip().endswith(self.delimiter):
            self.inside = False


def pump_dump(src: int, dst: int, limiter: Limiter, stats: DumpStats,
              stop: threading.Event) -> None:
    """Blocking (a worker thread): copy the dump from ``src`` to ``dst`` at the limiter's
    rate, counting rows per table and finding the snapshot's position and the end mark
    (``DumpReader``). Every line's start is looked at before any of it is written: a client
    command where a statement would start stops the copy, and none of it reaches the
    client. A long line streams once its start is known; memory stays a chunk and a head."""
    reader = DumpReader(stats)
    head = b""  # the start of the current line, not written yet
    started = False  # the current line's start was looked at (and written)

    def write(data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view:
            written = os.write(dst, view)
            view = view[written:]

    try:
        while not stop.is_set():
            chunk = os.read(src, CHUNK)
            if not chunk:
                break
            out = bytearray()
            pos = 0
            while pos < len(chunk):
                nl = chunk.find(b"\n", pos)
                piece = chunk[pos:] if nl < 0 else chunk[pos:nl]
                pos = len(chunk) if nl < 0 else nl + 1
                if started:
                    reader.more(piece)
                    out += piece
                else:
                    head += piece
                    if nl < 0 and len(head) < HOLD:
                        break  # wait for more of this line's start
                    if not reader.start(head):
                        return
                    out += head
                    head, started = b"", True
                if nl >= 0:
                    reader.end_line()
                    out += b"\n"
                    started = False
            write(out)
            stats.bytes += len(out)
            limiter.after(len(out), stop)
        if head and not stop.is_set():
            if not reader.start(head):
                return
            reader.end_line()
            write(head)
            stats.bytes += len(head)
    except OSError as exc:
        stats.error = exc.strerror or str(exc)
    finally:
        os.close(src)
        os.close(dst)


# --- the job ------------------------------------------------------------------------------


@dataclass
class Run:
    """One full sync's findings, shared by its steps."""

    what: str
    master: str = ""
    db_info: dict[str, Any] | None = None
    db_total: int = 0
    db_done: int = 0
    file_totals: dict[str, int] = field(default_factory=dict)
    files_done: int = 0
    copy_started: float | None = None  # the first copy's start: the rate is measured from it
    database_result: str | None = None
    files_result: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return max(0, self.db_total - self.db_done) + max(
            0, sum(self.file_totals.values()) - self.files_done)

    def eta(self) -> float | None:
        moved = self.db_done + self.files_done
        if self.copy_started is None:
            self.copy_started = time.monotonic()
            return None
        elapsed = time.monotonic() - self.copy_started
        if moved <= 0 or elapsed < 1.0:
            return None
        return self.remaining / (moved / elapsed)


class FullSync:
    """The ``full-sync`` job kind of a pair; ``database``/``transport`` are the manager's
    current replication objects (None when not running)."""

    def __init__(self, marker: SyncMarker, events: EventLog, *, view: View,
                 database: Callable[[], DatabaseReplication | None],
                 transport: Callable[[], FileSync | None],
                 state_dir: Path, wall: Callable[[], float] = time.time) -> None:
        self.marker = marker
        self.events = events
        self.view = view
        self.database = database
        self.transport = transport
        self.state_dir = state_dir
        self.wall = wall
        self.runs: dict[int, Run] = {}
        self.running: int | None = None  # the job id while one runs

    def kind(self) -> JobKind:
        return JobKind(
            name=FULL_SYNC, title="Full sync",
            description="on the slave: copy the master's database and files whole, with "
            "progress, then verify (row counts, file counts and bytes); parameter what: "
            "all, db or files",
            steps=(StepDef("check", "check the pair and measure", self._ending(self._check)),
                   StepDef("database", "copy the database",
                           self._ending(self._copy_database)),
                   StepDef("files", "copy the files", self._ending(self._copy_files)),
                   StepDef("verify", "verify and finish", self._ending(self._verify))),
            cancellable=True, admit=self.admit, weights=(1.0, 48.5, 48.5, 2.0))

    def _ending(self, step: Callable[[StepContext], Awaitable[str]]
                ) -> Callable[[StepContext], Awaitable[str]]:
        """A step that ends the job when it fails or is cancelled: the sync no longer runs
        (a forced takeover is possible again; the pause of the pushes is lifted)."""
        async def run(ctx: StepContext) -> str:
            try:
                return await step(ctx)
            except StepSkipped:
                raise
            except BaseException:
                if self.running == ctx.job.id:
                    self.running = None
                self.runs.pop(ctx.job.id, None)
                raise
        return run

    # --- admission --------------------------------------------------------------------

    def _refusal(self, what: str) -> str | None:
        role, peer, alive = self.view()
        transport = self.transport()
        if role is Role.INIT and transport is None and self.database() is None:
            return "fault tolerance with replication is not running on this node"
        if role is Role.MASTER:
            return ("this node is master: a full sync copies the master's data onto the "
                    "slave, so it runs on the slave")
        if role is Role.OFF:
            return "this node is off: set it to slave first (voxnode ha set-state slave)"
        if peer is None or not alive:
            return "the peer is unreachable: there is no master to copy from"
        if peer.role is not Role.MASTER:
            return f"the peer is {peer.role.value}, not master: nothing to copy from"
        if transport is None:
            return "the pair replicates neither a database nor paths (ha.replication)"
        if what == "db" and self.database() is None:
            return "the pair replicates no database (ha.replication.database.engine: none)"
        if what == "files" and not transport.settings.paths:
            return "the pair replicates no paths (ha.replication.paths is empty)"
        return None

    async def admit(self, params: dict[str, Any]) -> dict[str, str]:
        what = params.pop("what", "all")
        problems = [Problem(f"params.{k}", "unknown parameter (allowed: what)")
                    for k in sorted(params)]
        if not isinstance(what, str) or what not in WHAT:
            problems.append(Problem("params.what", f"'{str(what)[:40]}' is not one of "
                                    f"{', '.join(WHAT)}"))
        if problems:
            raise InvalidInput("bad full sync request", problems=problems)
        refusal = self._refusal(what)
        if refusal is not None:
            raise Conflict(f"no full sync: {refusal}")
        return {"what": what}

    # --- steps ------------------------------------------------------------------------

    def _run(self, ctx: StepContext) -> Run:
        run = self.runs.get(ctx.job.id)
        if run is None:  # the job is new to this agent (check is its first step)
            run = self.runs[ctx.job.id] = Run(ctx.params.get("what", "all"))
        return run

    def _wants(self, run: Run, part: str) -> bool:
        if part == "db":
            return run.what in ("all", "db") and self.database() is not None
        transport = self.transport()
        return run.what in ("all", "files") and transport is not None and bool(
            transport.settings.paths)

    def _transport(self) -> FileSync:
        transport = self.transport()
        if transport is None:
            raise FullSyncFailed("the pair's replication stopped meanwhile")
        return transport

    async def _check(self, ctx: StepContext) -> str:
        run = self._run(ctx)
        self.running = ctx.job.id
        refusal = self._refusal(run.what)
        if refusal is not None:
            raise FullSyncFailed(refusal)
        transport = self._transport()
        run.master = str(transport.settings.peer)
        parts = {p for p in PARTS if self._wants(run, p)}
        await self.marker.need(parts, f"the full sync (job {ctx.job.id}) started at "
                               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.wall()))}"
                               " has not finished", wall=self.wall())
        self.events.emit("replication.full-sync-started", f"full sync (job {ctx.job.id}, "
                         f"{run.what}) from {run.master}", level=logging.WARNING)
        said = []
        if self._wants(run, "db"):
            ctx.report(20, "measuring the master's databases")
            out = await self._ssh_output(transport, sshkeys.DATABASE_KEY_FILE,
                                         ["voxnode-db", "info"])
            try:
                info = json.loads(out)
                run.db_info = info
                run.db_total = max(1, int(info["bytes"]))
                databases = [str(d) for d in info["databases"]]
            except (ValueError, KeyError, TypeError):
                raise FullSyncFailed(f"the master's database report is not readable: "
                                     f"{out[:200]!r}") from None
            said.append(f"database: {len(databases)} database(s), {info.get('tables', 0)} "
                        f"table(s), about {_size(run.db_total)}")
        if self._wants(run, "files"):
            for i, path in enumerate(transport.settings.paths):
                ctx.report(50 + 40 * i // max(1, len(transport.settings.paths)),
                           f"measuring {path}")
                run.file_totals[path] = await self._measure(transport, path)
            said.append(f"files: {len(run.file_totals)} path(s), "
                        f"{_size(sum(run.file_totals.values()))} to copy")
        total = run.db_total + sum(run.file_totals.values())
        db_share = 97.0 * run.db_total / total if total else 0.0
        ctx.weigh({"database": db_share if self._wants(run, "db") else 0.0,
                   "files": 97.0 - db_share if self._wants(run, "files") else 0.0})
        return f"copying from the master {run.master}: " + "; ".join(said)

    async def _copy_database(self, ctx: StepContext) -> str:
        run = self._run(ctx)
        database = self.database()
        if not self._wants(run, "db") or database is None:
            raise StepSkipped("not asked for" if run.what == "files" else
                              "the pair replicates no database")
        transport = self._transport()
        await database.hold_for_full_sync(f"a full sync (job {ctx.job.id}) is copying the "
                                          "database from the master")
        try:
            info = run.db_info or {}
            wanted = [str(d) for d in info.get("databases", [])]
            if database.diverged is not None:
                ctx.report(0, "saving the transactions only this node has")
                await database.save_diverged()
            ctx.report(0, "saving what only this node has")
            extra, saved = await self._save_extra(database, wanted)
            database.copy_started(f"the full sync (job {ctx.job.id}) did not finish "
                                  "replacing this node's databases")
            await self.marker.need({"db"}, f"the full sync (job {ctx.job.id}) did not finish "
                                   "copying the database", database_incomplete=True,
                                   wall=self.wall())
            if extra:
                await database.db.execute(*(f"DROP DATABASE {quote_name(d)}" for d in extra),
                                          what="dropping the databases only this node has")
            stats = await self._stream_dump(ctx, run, transport, database)
            _check_position(str(info.get("position", "")), stats.position or "")
            ctx.report(99, "counting the rows of every table")
            counts = await count_rows(database.db, sorted(stats.rows))
            wrong = [f"{s}.{t}: {counts[(s, t)]} here, {n} in the master's snapshot"
                     for (s, t), n in sorted(stats.rows.items()) if counts[(s, t)] != n]
            if wrong:
                raise FullSyncFailed("the copy does not match the master's snapshot ("
                                     + "; ".join(wrong[:5]) + (" …" if len(wrong) > 5 else "")
                                     + "); replication stays stopped")
            assert stats.position is not None
            await database.full_sync_done(stats.position)
        except asyncio.CancelledError:
            database.release()  # once touched, ``incomplete`` keeps it from replicating
            raise
        except (DatabaseError, VoxnodeError) as exc:
            database.release()
            if isinstance(exc, VoxnodeError):
                raise
            raise FullSyncFailed(exc.args[0]) from None
        rows = sum(stats.rows.values())
        run.database_result = (f"{len(stats.rows)} table(s), {rows} row(s), counts match the "
                               f"master's snapshot at {stats.position or 'an empty position'}")
        if database.saved:
            saved.append(f"this node's diverged transactions to {database.saved}")
        kept = f"; saved {', '.join(saved)} first" if saved else ""
        return (f"copied {_size(stats.bytes)} ({run.database_result}); replicating from "
                f"there{kept}")

    async def _save_extra(self, database: DatabaseReplication, wanted: list[str]
                          ) -> tuple[list[str], list[str]]:
        """Databases only this node has, dumped under the state directory (dropped by the
        caller once the node is marked); (their names, what was said about them)."""
        extra = [d for d in await user_databases(database.db) if d not in wanted]
        if not extra:
            return [], []
        where = self.state_dir / "ha" / "saved" / time.strftime(
            "%Y%m%dT%H%M%S", time.localtime(self.wall()))
        target = where / "databases-only-here.sql"
        fd = await asyncio.to_thread(create_new, target)
        try:
            proc = await asyncio.create_subprocess_exec(
                MARIADB_DUMP, f"--socket={database.db.socket}", "--single-transaction",
                "--routines", "--events", "--triggers", "--hex-blob", "--databases", *extra,
                stdout=fd, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        finally:
            os.close(fd)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise FullSyncFailed(f"cannot save the databases only this node has ("
                                 f"{', '.join(extra)}) before the copy: "
                                 f"{last_words(err)}; nothing was changed")
        await durable(fsync_file, target)
        self.events.emit("replication.full-sync-saved", f"the databases only this node had "
                         f"({', '.join(extra)}) are saved in {target}", level=logging.WARNING)
        return extra, [f"{', '.join(extra)} to {target}"]

    async def _stream_dump(self, ctx: StepContext, run: Run, transport: FileSync,
                           database: DatabaseReplication) -> DumpStats:
        ssh = [*transport.ssh_command(sshkeys.DATABASE_KEY_FILE),
               _ssh_host(transport), "voxnode-db", "dump"]
        client = [MARIADB, f"--socket={database.db.socket}", "--user=root", "--sandbox",
                  "--binary-mode", "--init-command=SET SESSION sql_log_bin=0"]
        stats = DumpStats()
        stop = threading.Event()
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        procs: list[asyncio.subprocess.Process] = []
        try:
            procs.append(await asyncio.create_subprocess_exec(
                *ssh, stdin=asyncio.subprocess.DEVNULL, stdout=w1,
                stderr=asyncio.subprocess.PIPE, start_new_session=True))
            procs.append(await asyncio.create_subprocess_exec(
                *client, stdin=r2, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True))
        except OSError as exc:
            for fd in (r1, w1, r2, w2):
                with contextlib.suppress(OSError):
                    os.close(fd)
            for proc in procs:
                kill_group(proc)
            raise FullSyncFailed(f"cannot start the copy: {exc.strerror}") from None
        os.close(w1)
        os.close(r2)
        limiter = Limiter(transport.settings.bandwidth_kb * 1024.0)
        pump = asyncio.ensure_future(asyncio.to_thread(pump_dump, r1, w2, limiter, stats, stop))
        began = time.monotonic()
        errors = [asyncio.ensure_future(p.stderr.read()) for p in procs if p.stderr]
        try:
            while not pump.done():
                run.db_done = stats.bytes
                ctx.report(min(98, stats.bytes * 100 // max(1, run.db_total)),
                           f"{_size(stats.bytes)} of about {_size(run.db_total)}",
                           eta_s=run.eta())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REPORT_S):
                        await asyncio.shield(pump)
            await pump
            codes = [await p.wait() for p in procs]
        except asyncio.CancelledError:
            stop.set()
            for proc in procs:
                kill_group(proc)
            for proc in procs:
                await proc.wait()
            with contextlib.suppress(Exception):
                await pump
            raise
        finally:
            for proc in procs:
                kill_group(proc)
            err = [await e for e in errors]
        run.db_done = stats.bytes
        took = max(1e-3, time.monotonic() - began)
        ctx.detail(bytes=stats.bytes, seconds=round(took, 3),
                   kib_s=round(stats.bytes / 1024 / took, 1))
        if stats.refused is not None:
            raise FullSyncFailed(f"the master's dump holds a client command ({stats.refused!r}): "
                                 "not imported further")
        if codes[0] != 0:
            raise FullSyncFailed(f"the master's dump stopped (ssh exited {codes[0]}): "
                                 f"{last_words(err[0])}")
        if codes[1] != 0:
            raise FullSyncFailed(f"importing the dump failed: {last_words(err[1])}")
        if stats.error is not None:
            raise FullSyncFailed(f"the copy broke off: {stats.error}")
        if not stats.complete or stats.position is None:
            raise FullSyncFailed("the master's dump ended before its end mark (truncated)")
        return stats

    async def _copy_files(self, ctx: StepContext) -> str:
        run = self._run(ctx)
        if not self._wants(run, "files"):
            raise StepSkipped("not asked for" if run.what == "db" else
                              "the pair replicates no paths")
        transport = self._transport()
        pause = Path(transport.host(sshkeys.PAUSE_FILE))
        moved = 0
        took = 0.0
        touching = asyncio.ensure_future(asyncio.to_thread(_touch, pause))
        try:
            await asyncio.shield(touching)
            done_before = 0
            for path in transport.settings.paths:
                total = run.file_totals.get(path, 0)
                began = time.monotonic()
                streamed, streaming = await self._pull(ctx, run, transport, path,
                                                       done_before, progress=True)
                if total:
                    moved, took = moved + total, took + time.monotonic() - began
                    ctx.detail(bytes=moved, seconds=round(took, 3),
                               kib_s=round(moved / 1024 / max(1e-3, took), 1))
                if streaming > 1.0:
                    ctx.detail(transfer_kib_s=round(streamed / 1024 / streaming, 1))
                done_before += total
                run.files_done = done_before
                result = None
                for _ in range(FILE_PASSES):
                    result = await self._compare(run, transport, path)
                    if result is None:
                        break
                    await self._pull(ctx, run, transport, path, done_before, progress=False)
                if result is not None:
                    raise FullSyncFailed(f"{path} differs from the master after "
                                         f"{FILE_PASSES} passes ({result}): files still "
                                         "changing there?")
        finally:
            # also when cancelled while the pause was being written: the removal waits for
            # the write and runs to its end whatever else is cancelled meanwhile
            await asyncio.shield(asyncio.ensure_future(_lift_pause(touching, pause)))
        return "; ".join(run.files_result)

    async def _pull(self, ctx: StepContext, run: Run, transport: FileSync, path: str,
                    done_before: int, *, progress: bool) -> tuple[int, float]:
        """One rsync pull of ``path``; (bytes moved after the first progress line, the
        seconds since it): the rate of the transfer itself, connection set-up aside."""
        total_all = max(1, sum(run.file_totals.values()))
        argv = [RSYNC, "-rlptgo", "--delete", *syncshell.RECEIVER_SAFETY,
                "--partial-dir=.voxnode-partial",
                "--no-inc-recursive", "--info=progress2", "--no-human-readable",
                f"--bwlimit={transport.settings.bandwidth_kb}",
                "-e", " ".join(transport.ssh_command(sshkeys.pull_key_file(path))),
                transport.remote("./"), transport.host(path) + "/"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        errors = asyncio.ensure_future(proc.stderr.read()) if proc.stderr else None
        try:
            assert proc.stdout is not None
            buffer = ""
            last = 0.0
            first: tuple[float, int] | None = None
            moved = 0
            while True:
                chunk = await proc.stdout.read(4096)
                if not chunk:
                    break
                buffer = (buffer + chunk.decode(errors="replace"))[-4096:]
                parts = re.split(r"[\r\n]", buffer)
                buffer = parts[-1]
                for part in reversed(parts[:-1]):
                    m = _PROGRESS.match(part)
                    if m and progress:
                        moved = int(m.group(1).replace(",", ""))
                        if first is None and moved > 0:
                            first = (time.monotonic(), moved)
                        run.files_done = done_before + min(moved, run.file_totals.get(path, 0))
                        break
                if progress and time.monotonic() - last >= REPORT_S:
                    last = time.monotonic()
                    ctx.report(min(99, run.files_done * 100 // total_all),
                               f"{path}: {_size(run.files_done)} of "
                               f"{_size(sum(run.file_totals.values()))}", eta_s=run.eta())
            code = await proc.wait()
        except asyncio.CancelledError:
            kill_group(proc)
            await proc.wait()
            raise
        finally:
            kill_group(proc)
            err = await errors if errors else b""
        if code not in (0, 24):  # 24: files vanished on the master meanwhile
            raise FullSyncFailed(f"copying {path} failed (rsync exited {code}): {last_words(err)}")
        if first is None:
            return 0, 0.0
        return max(0, moved - first[1]), time.monotonic() - first[0]

    async def _compare(self, run: Run, transport: FileSync, path: str) -> str | None:
        out = await self._ssh_output(transport, sshkeys.pull_key_file(path), ["voxnode-stat"])
        try:
            theirs = json.loads(out)
            master = {k: int(theirs[k]) for k in ("files", "bytes", "directories", "links")}
        except (ValueError, KeyError, TypeError):
            raise FullSyncFailed(f"the master's count of {path} is not readable: "
                                 f"{out[:200]!r}") from None
        mine = await asyncio.to_thread(syncshell.tree_stat, transport.host(path))
        if mine == master:
            run.files_result.append(f"{path}: {master['files']} files, "
                                    f"{_size(master['bytes'])}, {master['directories']} "
                                    "directories, as on the master")
            return None
        return (f"master {master['files']} files, {_size(master['bytes'])}, "
                f"{master['directories']} directories, {master['links']} links; here "
                f"{mine['files']} files, {_size(mine['bytes'])}, {mine['directories']} "
                f"directories, {mine['links']} links")

    async def _verify(self, ctx: StepContext) -> str:
        run = self._run(ctx)
        said = []
        if self._wants(run, "db"):
            if run.database_result is None:
                raise FullSyncFailed("the database was not copied")
            said.append(f"database: {run.database_result}")
        if self._wants(run, "files"):
            said.extend(run.files_result)
        left = await self.marker.done({p for p in PARTS if self._wants(run, p)})
        self.running = None
        text = "; ".join(said) or "nothing to copy"
        if left:
            text += ("; still needed: a full sync of " + " and ".join(
                {"db": "the database", "files": "the files"}[p] for p in sorted(left))
                + " (an earlier copy did not finish)")
        self.events.emit("replication.full-sync-done", f"full sync (job {ctx.job.id}) from "
                         f"{run.master} done: {text}")
        self.runs.pop(ctx.job.id, None)
        return text

    # --- the transport ------------------------------------------------------------------

    async def _measure(self, transport: FileSync, path: str) -> int:
        argv = [RSYNC, "-rlptgo", "--delete", "--dry-run", "--stats", "--no-human-readable",
                "-e", " ".join(transport.ssh_command(sshkeys.pull_key_file(path))),
                transport.remote("./"), transport.host(path) + "/"]
        out = await _output(argv, f"measuring {path} on the master")
        m = _TOTAL.search(out)
        if m is None:
            raise FullSyncFailed(f"rsync did not say how much {path} holds")
        return int(re.sub(r"[,.]", "", m.group(1)))

    async def _ssh_output(self, transport: FileSync, key: str, command: list[str]) -> str:
        return await _output([*transport.ssh_command(key), _ssh_host(transport), *command],
                             f"asking the master ({' '.join(command)})")

    def cleanup_after_crash(self, transport: FileSync | None) -> None:
        """Blocking, at start: a pause file left by an agent that stopped mid-copy."""
        if transport is not None:
            _remove(Path(transport.host(sshkeys.PAUSE_FILE)))


def _check_position(before: str, snapshot: str) -> None:
    """The dump's position holds every transaction the master had when it was measured:
    a position that is behind (or unreadable) is not replicated from."""
    try:
        known, taken = parse_position(before), parse_position(snapshot)
    except BadPosition as exc:
        raise FullSyncFailed(f"the dump's position is not readable: {exc}") from None
    behind = ahead_of(known, taken)
    if behind:
        raise FullSyncFailed(f"the dump's position {snapshot or '(empty)'} lacks "
                             f"{describe(behind)} the master had before it: refused")


def _ssh_host(transport: FileSync) -> str:
    return f"root@{transport.settings.peer}"


async def _output(argv: list[str], what: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise FullSyncFailed(f"{what}: {exc.strerror}") from None
    try:
        async with asyncio.timeout(MEASURE_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        kill_group(proc)
        await proc.wait()
        raise FullSyncFailed(f"{what}: no answer within {MEASURE_TIMEOUT_S:g} s") from None
    except asyncio.CancelledError:
        kill_group(proc)
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise FullSyncFailed(f"{what} failed: {last_words(err)}")
    return out.decode(errors="replace")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


async def _lift_pause(touching: asyncio.Future[None], pause: Path) -> None:
    with contextlib.suppress(Exception):
        await touching
    await asyncio.to_thread(_remove, pause)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
