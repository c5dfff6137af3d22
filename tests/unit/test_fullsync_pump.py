"""The full sync's byte pump (ha/replication/fullsync.py ``pump_dump``): what it counts and
refuses in a dump, driven through real pipes, chunk boundaries anywhere."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ha.replication.fullsync import CHUNK, DumpStats, Limiter, pump_dump

DUMP = (b"/*M!999999\\- enable the sandbox mode */ \n"
        b"USE `pbx`;\n"
        b"CREATE TABLE `calls` (\n  `id` int\n);\n"
        b"INSERT INTO `calls` VALUES (1,'a\\nINSERT INTO `x` VALUES (9)');\n"
        b"INSERT INTO `calls` VALUES (2,'b');\n"
        b"CREATE TABLE `empty` (\n  `id` int\n);\n"
        b"CREATE TABLE `we``ird` (\n  `id` int\n);\n"
        b"INSERT INTO `we``ird` VALUES (3);\n"
        b"USE `other`;\n"
        b"INSERT INTO `calls` VALUES (4);\n"
        b"-- SET GLOBAL gtid_slave_pos='0-11-42';\n"
        b"-- Dump completed\n")


def pump(data: bytes, *, rate: float = 1e12, split: int | None = None
         ) -> tuple[DumpStats, bytes]:
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    stats = DumpStats()
    stop = threading.Event()
    out = bytearray()

    def feed() -> None:
        step = split or len(data) or 1
        for i in range(0, len(data), step):
            os.write(src_w, data[i:i + step])
        os.close(src_w)

    def drain() -> None:
        while chunk := os.read(dst_r, 65536):
            out.extend(chunk)
        os.close(dst_r)

    threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    pump_dump(src_r, dst_w, Limiter(rate), stats, stop)
    for t in threads:
        t.join(10)
    return stats, bytes(out)


@pytest.mark.parametrize("split", [None, 1, 7, 64])
def test_rows_per_table_the_position_and_the_end_mark(split: int | None) -> None:
    stats, out = pump(DUMP, split=split)
    assert out == DUMP and stats.bytes == len(DUMP)
    assert stats.rows == {("pbx", "calls"): 2, ("pbx", "empty"): 0, ("pbx", "we`ird"): 1,
                          ("other", "calls"): 1}
    assert stats.position == "0-11-42" and stats.complete and stats.refused is None


def test_a_dump_without_its_end_mark_is_not_complete() -> None:
    stats, _ = pump(DUMP[:DUMP.index(b"-- Dump completed")])
    assert not stats.complete and stats.position == "0-11-42"


@pytest.mark.parametrize("line", [b"\\! touch /tmp/x", b"system touch /tmp/x",
                                  b"  SOURCE /etc/shadow", b"\\. /etc/shadow",
                                  b"tee /etc/cron.d/x", b"pager sh", b"connect other"])
def test_client_commands_stop_the_copy_before_they_reach_the_client(line: bytes) -> None:
    data = b"USE `pbx`;\n" + line + b"\nINSERT INTO `t` VALUES (1);\n-- Dump completed\n"
    stats, out = pump(data)
    assert stats.refused is not None and line.strip().decode() in stats.refused
    assert line not in out  # the chunk holding it was never written on
    assert not stats.complete


def test_a_line_longer_than_a_chunk_and_binary_names() -> None:
    long = b"INSERT INTO `t\xff` VALUES ('" + b"z" * (3 * CHUNK) + b"');\n"
    stats, out = pump(b"USE `p\xfe`;\n" + long + b"-- Dump completed", split=4096)
    assert stats.rows == {("p\ufffd", "t\ufffd"): 1} and stats.complete
    assert out.endswith(b"-- Dump completed")


def test_the_limiter_holds_the_rate() -> None:
    data = b"-- x\n" * (200 * 1024 // 5)  # 200 KiB
    started = time.monotonic()
    stats, _ = pump(data, rate=400 * 1024)
    took = time.monotonic() - started
    assert stats.bytes == len(data)
    assert took >= 0.4  # 200 KiB at 400 KiB/s, less the first chunk's head start


def test_a_reader_that_goes_away_is_an_error_not_a_hang() -> None:
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    os.close(dst_r)  # the client died
    os.write(src_w, b"INSERT INTO `t` VALUES (1);\n")
    os.close(src_w)
    stats = DumpStats()
    pump_dump(src_r, dst_w, Limiter(1e12), stats, threading.Event())
    assert stats.error is not None


def test_a_client_command_split_across_chunks_never_reaches_the_client() -> None:
    data = b"USE `pbx`;\n\\! touch /tmp/owned\n-- Dump completed\n"
    for split in range(1, len(data)):
        stats, out = pump(data, split=split)
        assert stats.refused is not None, split
        assert b"\\!" not in out and b"touch" not in out, (split, out)


def test_a_long_line_streams_through_and_the_next_line_is_still_looked_at() -> None:
    long = b"INSERT INTO `t` VALUES ('" + b"z" * 5000 + b"');\n"
    data = b"USE `pbx`;\n" + long + b"system id\n"
    for split in (100, 1000, 4999, 6000):
        stats, out = pump(data, split=split)
        assert stats.rows == {("pbx", "t"): 1} and stats.refused == "system id", split
        assert b"system" not in out
