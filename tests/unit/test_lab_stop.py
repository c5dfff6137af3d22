"""`lab down`'s wait for the lab's processes (lab.util.stop_processes), with real child
processes: one slow to exit is waited for, one that outlives the timeout is returned and
named, a PID reused by another process is not mistaken for it, and processes found while
waiting are signalled and waited for too; and down's sequence (SIGTERM to each node's
systemd-nspawn, SIGKILL after the stop timeout) on stand-ins for the lab's processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import lifecycle
from lab.nodes import NODES, _recorded_nspawn, save_state
from lab.util import (
    LabError,
    LabProcess,
    Paths,
    is_running,
    lab_process,
    still_running_error,
    stop_processes,
)

# the child says "ready" once its SIGTERM handler is in place
SLOW_EXIT = """
import signal, sys, time
def stop(*_):
    time.sleep({delay})
    sys.exit(0)
signal.signal(signal.SIGTERM, {handler})
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(10)


def spawn(children: list[subprocess.Popen[str]], *, delay: float = 0.0,
          ignore_term: bool = False) -> LabProcess:
    code = SLOW_EXIT.format(delay=delay, handler="signal.SIG_IGN" if ignore_term else "stop")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    children.append(child)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    process = lab_process(child.pid, "test")
    assert process is not None
    return process


def test_a_process_slow_to_exit_is_waited_for(children: list[subprocess.Popen[str]]) -> None:
    process = spawn(children, delay=0.6)
    started = time.monotonic()
    left = stop_processes([process], signal.SIGTERM, timeout=10)
    waited = time.monotonic() - started
    assert left == []
    assert waited >= 0.5, f"returned after {waited:.2f} s, before the process had exited"
    assert children[0].wait(1) == 0  # it exited on its own, after the handler's sleep


def test_an_exited_process_not_yet_reaped_counts_as_gone(
        children: list[subprocess.Popen[str]]) -> None:
    process = spawn(children)
    stop_processes([process], signal.SIGTERM, timeout=10)
    assert not is_running(process)  # a zombie: our child, not waited for yet
    assert lab_process(process.pid, "test") is None


def test_a_process_outliving_the_timeout_is_returned_and_named(
        children: list[subprocess.Popen[str]]) -> None:
    process = spawn(children, ignore_term=True)
    started = time.monotonic()
    left = stop_processes([process], signal.SIGTERM, timeout=0.3)
    waited = time.monotonic() - started
    assert left == [process] and 0.3 <= waited < 3, waited
    error = still_running_error(left, 10)
    assert error.message.startswith("lab down: still running 10 s after SIGKILL: ")
    assert f"(pid {process.pid}, test)" in error.message
    assert process.describe() in error.message
    assert "can be run again" in error.message
    assert stop_processes(left, signal.SIGKILL, timeout=10) == []


def test_a_reused_pid_is_not_taken_for_the_process(children: list[subprocess.Popen[str]]) -> None:
    process = spawn(children)
    earlier = LabProcess(process.pid, process.started - 1, process.name, "test")
    assert is_running(process) and not is_running(earlier)
    started = time.monotonic()
    assert stop_processes([earlier], signal.SIGKILL, timeout=5) == []
    assert time.monotonic() - started < 1
    assert children[0].poll() is None, "the newcomer on the PID got the signal"


def test_processes_found_while_waiting_are_stopped_too(
        children: list[subprocess.Popen[str]]) -> None:
    first = spawn(children, delay=0.3)
    later = spawn(children, ignore_term=True)
    scans = [[], [later]]  # the second appears on the second look

    def scan() -> list[LabProcess]:
        return scans.pop(0) if scans else []

    left = stop_processes([first], signal.SIGTERM, timeout=1.0, scan=scan)
    assert left == [later]  # signalled (and waited for), but it ignores SIGTERM
    assert not is_running(first)
    assert stop_processes([], signal.SIGKILL, timeout=5, scan=lambda: [later]) == []


# --- lab down's sequence, on stand-ins for a node's systemd-nspawn ----------------------------


@pytest.fixture
def nspawn_named(tmp_path: Path) -> Path:
    """An interpreter whose kernel command name is ``systemd-nspawn`` (a symlink of that
    name), so a child runs as a node's nspawn does in the eyes of ``lab down``."""
    link = tmp_path / "systemd-nspawn"
    link.symlink_to(Path(sys.executable).resolve())
    return link


def spawn_nspawn(children: list[subprocess.Popen[str]], interpreter: Path, *,
                 delay: float = 0.0, ignore_term: bool = False) -> LabProcess:
    code = SLOW_EXIT.format(delay=delay, handler="signal.SIG_IGN" if ignore_term else "stop")
    child = subprocess.Popen([str(interpreter), "-I", "-c", code], stdout=subprocess.PIPE,
                             text=True, stdin=subprocess.DEVNULL)
    children.append(child)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    process = lab_process(child.pid, "node1")
    assert process is not None and process.name == "systemd-nspawn"
    return process


def test_down_waits_for_a_node_slow_to_power_off(
        children: list[subprocess.Popen[str]], nspawn_named: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = spawn_nspawn(children, nspawn_named, delay=0.6)
    helper = spawn(children)  # e.g. a command left in a lab namespace
    monkeypatch.setattr(lifecycle, "lab_processes", lambda paths: [node, helper])
    monkeypatch.setattr(lifecycle, "registered_machines", list)
    started = time.monotonic()
    lifecycle._wait_processes(Paths(out=tmp_path / "out", cache=tmp_path / "cache"))
    assert time.monotonic() - started >= 0.5
    assert not is_running(node) and not is_running(helper)
    assert children[0].wait(1) == 0  # the node powered off by itself, on SIGTERM
    assert children[1].wait(1) == -signal.SIGKILL


def test_down_kills_a_node_that_ignores_sigterm_after_the_stop_timeout(
        children: list[subprocess.Popen[str]], nspawn_named: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    node = spawn_nspawn(children, nspawn_named, ignore_term=True)
    monkeypatch.setattr(lifecycle, "lab_processes", lambda paths: [node])
    monkeypatch.setattr(lifecycle, "registered_machines", list)
    monkeypatch.setattr(lifecycle, "STOP_TIMEOUT_S", 0.3)
    lifecycle._wait_processes(Paths(out=tmp_path / "out", cache=tmp_path / "cache"))
    assert children[0].wait(1) == -signal.SIGKILL
    assert (f"systemd-nspawn (pid {node.pid}, node1) still running after 0 s: SIGKILL"
            in capsys.readouterr().out)


def test_down_names_a_node_machinectl_still_lists(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "lab_processes", lambda paths: [])
    monkeypatch.setattr(lifecycle, "registered_machines", lambda: ["node2"])
    monkeypatch.setattr(lifecycle, "KILL_TIMEOUT_S", 0.3)
    with pytest.raises(LabError) as err:
        lifecycle._wait_processes(Paths(out=tmp_path / "out", cache=tmp_path / "cache"))
    assert err.value.message.startswith("lab down: machinectl still lists node2 0 s after")


def test_a_recorded_nspawn_is_adopted_only_if_it_is_the_same_process(
        children: list[subprocess.Popen[str]], nspawn_named: Path, tmp_path: Path) -> None:
    """``down`` trusts the state file's PID only with its start time: a stale or edited file
    naming another systemd-nspawn (another container on the host) aims nothing at it."""
    paths = Paths(out=tmp_path / "out", cache=tmp_path / "cache")
    paths.out.mkdir()
    other = spawn_nspawn(children, nspawn_named)
    node = NODES[0]
    save_state(paths, {"nodes": {node.name: {"nspawn_pid": other.pid}}})  # no start time
    assert _recorded_nspawn(paths, node) is None
    save_state(paths, {"nodes": {node.name: {"nspawn_pid": other.pid,
                                             "nspawn_started": other.started + 1}}})
    assert _recorded_nspawn(paths, node) is None
    save_state(paths, {"nodes": {node.name: {"nspawn_pid": other.pid,
                                             "nspawn_started": other.started}}})
    assert _recorded_nspawn(paths, node) == other.pid


def test_a_pid_reused_while_waiting_is_tracked_as_another_process(
        children: list[subprocess.Popen[str]]) -> None:
    """Processes are told apart by pid and start time: a process the scan finds under the
    pid of a tracked one that has exited (the pid reused) is signalled and waited for."""
    running = spawn(children)
    exited = LabProcess(running.pid, running.started - 1, running.name, "test")  # the pid's
    # earlier owner, gone
    left = stop_processes([exited], signal.SIGTERM, 5, scan=lambda: [running])
    assert left == []
    assert children[0].wait(5) == 0  # it got SIGTERM and exited
