"""systemd notification datagrams, received on a real socket in tmp_path."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from agent.sdnotify import Notifier


def test_ready_and_watchdog_reach_the_notify_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000000",
                      "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_interval == 10.0
        n.ready("serving")
        n.watchdog()
        n.stopping()
        got = [server.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=serving", "WATCHDOG=1", "STOPPING=1"]


def test_without_systemd_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    n.ready("x")  # must not raise


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000",
                  "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None
