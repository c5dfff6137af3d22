"""Hostile and unlucky inputs to the replication's pure parts: the path rules, the dump
pump, the full sync's bookkeeping (no servers; ``tests/netns/test_fullsync_faults.py`` has
the cases that need them)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.errors import InvalidInput
from agent.state.document import validate_document
from ha.replication import fullsync
from tests.unit.test_document import ha_doc

# --- ha.replication.paths: trees that must never be replicated whole ----------------------

@pytest.mark.parametrize("path", [
    "/usr/bin", "/usr/lib64", "/usr/sbin", "/usr/lib/systemd/system",  # the system's programs
    "/root/.ssh", "/etc/pki", "/etc/pam.d", "/etc/sudoers.d", "/etc/cron.d",  # its trust
    "/var/lib/rpm",  # the package database
])
def test_a_system_tree_below_the_top_level_is_refused(path: str) -> None:
    with pytest.raises(InvalidInput):
        validate_document(ha_doc(replication={"paths": [path]}))


# --- the dump pump -------------------------------------------------------------------------

def _pump(data: bytes, chunks: list[int] | None = None) -> tuple[fullsync.DumpStats, bytes]:
    """``data`` through pump_dump, written in pieces of ``chunks`` bytes (the pump reads
    what the pipe holds: a small write is a small read)."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    stats = fullsync.DumpStats()
    out = bytearray()
    pieces = []
    at = 0
    for n in chunks or [len(data)]:
        pieces.append(data[at:at + n])
        at += n
    pieces.append(data[at:])
    go = threading.Event()

    def drain() -> None:
        while b := os.read(r2, 65536):
            out.extend(b)
        os.close(r2)
    drainer = threading.Thread(target=drain)
    drainer.start()
    pump = threading.Thread(target=fullsync.pump_dump,
                            args=(r1, w2, fullsync.Limiter(1e12), stats, threading.Event()))
    pump.start()
    for piece in pieces:
        if piece:
            try:
                os.write(w1, piece)
            except BrokenPipeError:
                break
            go.wait(0.05)  # one read per piece
    os.close(w1)
    pump.join()
    drainer.join()
    return stats, bytes(out)


def test_a_refused_line_split_across_two_reads_is_not_passed_on_in_part() -> None:
    head = b"CREATE DATABASE a;\n"
    command = b"\\! touch /tmp/owned\n"
    stats, out = _pump(head + command, chunks=[len(head) + 6])
    assert stats.refused is not None
    assert b"\\!" not in out, out  # the client runs a last line without its newline


def test_a_routine_line_that_starts_with_a_column_named_source_is_not_a_client_command(
) -> None:
    dump = (b"USE `app`;\n"
            b"CREATE TABLE `cdr` (\n  `id` int(11) NOT NULL,\n  `source` varchar(20)\n);\n"
            b"DELIMITER ;;\n"
            b"CREATE DEFINER=`root`@`localhost` PROCEDURE `relabel`()\nBEGIN\n"
            b"UPDATE cdr SET\n  source = 'pstn'\nWHERE id = 1;\nEND ;;\nDELIMITER ;\n"
            b"-- SET GLOBAL gtid_slave_pos='0-1-5';\n-- Dump completed on 2026-12-02\n")
    stats, _ = _pump(dump)
    assert stats.refused is None, stats.refused


def test_a_trigger_body_is_not_counted_as_rows() -> None:
    dump = (b"USE `app`;\nCREATE TABLE `audit` (\n  `id` int(11)\n);\n"
            b"DELIMITER ;;\n/*!50003 CREATE*/ /*!50003 TRIGGER calls_ai AFTER INSERT ON "
            b"calls FOR EACH ROW\nBEGIN\nINSERT INTO `audit` VALUES (NEW.id);\nEND */;;\n"
            b"DELIMITER ;\n-- SET GLOBAL gtid_slave_pos='0-1-5';\n-- Dump completed\n")
    stats, _ = _pump(dump)
    assert stats.rows[("app", "audit")] == 0, stats.rows


def test_rows_dumped_with_a_column_list_are_counted() -> None:
    # mariadb-dump names the columns of a table with INVISIBLE or system-versioned columns
    dump = (b"USE `app`;\nCREATE TABLE `inv` (\n  `id` int(11) NOT NULL\n);\n"
            b"INSERT INTO `inv` (`id`, `secret`) VALUES (1,7);\n"
            b"INSERT INTO `inv` (`id`, `secret`) VALUES (2,7);\n"
            b"-- SET GLOBAL gtid_slave_pos='0-1-5';\n-- Dump completed\n")
    stats, _ = _pump(dump)
    assert stats.rows[("app", "inv")] == 2, stats.rows


def test_a_position_in_a_table_name_does_not_replace_the_snapshots() -> None:
    # the server's position line first (older servers print it before the data), then a
    # table whose name holds a line of its own
    dump = (b"-- SET GLOBAL gtid_slave_pos='0-1-500';\nUSE `app`;\n"
            b"CREATE TABLE `x\n-- SET GLOBAL gtid_slave_pos='0-1-1';\ny` (\n  `id` int\n);\n"
            b"-- Dump completed\n")
    stats, _ = _pump(dump)
    assert stats.position == "0-1-500", stats.position


def test_an_end_mark_in_a_table_name_does_not_make_a_truncated_dump_complete() -> None:
    dump = (b"-- SET GLOBAL gtid_slave_pos='0-1-5';\nUSE `app`;\n"
            b"CREATE TABLE `x\n-- Dump completed\ny` (\n  `id` int\n);\n"
            b"INSERT INTO `t` VALUES (1);\nINSERT INTO `t` VALU")  # cut here
    stats, _ = _pump(dump)
    assert not stats.complete


# --- the full sync's bookkeeping -----------------------------------------------------------

class _Ctx:
    def __init__(self, job_id: int, what: str) -> None:
        self.job = type("J", (), {"id": job_id})()
        self.params = {"what": what}

    def report(self, *a: Any, **k: Any) -> None:
        pass

    def detail(self, **k: Any) -> None:
        pass

    def weigh(self, w: Any) -> None:
        pass


def _full_sync(tmp_path: Path, view: Any) -> fullsync.FullSync:
    from agent.events import EventLog
    marker = fullsync.SyncMarker(tmp_path)
    transport = type("T", (), {"settings": type("S", (), {"paths": ("/srv/rec",)})(),
                               "host": lambda self, p: str(tmp_path / p.lstrip("/"))})()
    return fullsync.FullSync(marker, EventLog(), view=view, database=lambda: None,
                             transport=lambda: transport, state_dir=tmp_path)


def test_a_full_sync_that_fails_its_check_does_not_stay_running(tmp_path: Path) -> None:
    from ha.protocol import Role
    sync = _full_sync(tmp_path, lambda: (Role.SLAVE, None, False))  # the master is gone

    async def main() -> None:
        with pytest.raises(fullsync.FullSyncFailed):
            await sync.kind().steps[0].run(_Ctx(7, "files"))  # type: ignore[arg-type]
    asyncio.run(main())
    # set-state master --force refuses while this is set ("a full sync is running")
    assert sync.running is None, sync.running


def test_a_cancel_while_the_pause_is_written_leaves_no_pause(tmp_path: Path,
                                                             monkeypatch: Any) -> None:
    from ha.protocol import Role
    sync = _full_sync(tmp_path, lambda: (Role.SLAVE, None, True))
    run = fullsync.Run("files", file_totals={"/srv/rec": 0})
    sync.runs[3] = run
    touched = threading.Event()
    real_touch = fullsync._touch

    def slow_touch(path: Path) -> None:  # the worker pool is busy: the touch waits
        real_touch(path)
        touched.set()
        threading.Event().wait(0.3)
    monkeypatch.setattr(fullsync, "_touch", slow_touch)

    async def main() -> None:
        task = asyncio.ensure_future(sync._copy_files(_Ctx(3, "files")))  # type: ignore
        await asyncio.to_thread(touched.wait, 5)
        task.cancel()  # the operator's cancel
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(main())
    pause = tmp_path / "run/voxnode/full-sync"
    assert not pause.exists(), "a stale pause: the master's pushes wait until a restart"
