"""A writer for the database tests: inserts rows through one address and prints each row
the server acknowledged (its commit returned), one line per row, flushed at once.

``python -m lab.pair.dbwriter --host 10.88.0.10 --rate 200`` (run in the client namespace
with ``ip netns exec``): connects as ``pbx``/``pbx`` to ``pbx.calls``, inserts one row per
tick, and on any error reconnects after 50 ms, printing ``error <text>`` lines. What it
printed as ``ok <id>`` is what a client was told is stored: the rows a failover must not
lose. Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time

import pymysql

_stop = False


def _on_term(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dbwriter")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--rate", type=float, default=200.0, help="rows per second")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    period = 1.0 / args.rate
    conn = None
    seq = 0
    next_at = time.monotonic()
    while not _stop:
        try:
            if conn is None:
                conn = pymysql.connect(host=args.host, port=args.port, user="pbx",
                                       password="pbx", database="pbx", autocommit=True,
                                       connect_timeout=1, read_timeout=5, write_timeout=5)
            seq += 1
            with conn.cursor() as cur:
                cur.execute("INSERT INTO calls (seq, at) VALUES (%s, SYSDATE(6))", (seq,))
                row = cur.lastrowid
            print(f"ok {row} {seq} {time.monotonic():.6f}", flush=True)
        except (pymysql.err.MySQLError, OSError) as exc:
            print(f"error {time.monotonic():.6f} {str(exc)[:200]}", flush=True)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = None
            time.sleep(0.05)
            next_at = time.monotonic()
            continue
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()
    return 0


if __name__ == "__main__":
    sys.exit(main())
