"""Throwaway network namespaces for root-only tests; results are read back with ``ip -j``.

The ``netns`` fixture creates an empty namespace (only ``lo``, up) named ``vxt-<random>``
and always deletes it afterwards. Tests put whatever links they need inside and run code
in it with ``Netns.run`` / ``Netns.python``. Only 10.x addresses, and nothing leaves it.

The ``agent`` fixture runs the real ``voxnode-agent`` inside such a namespace, which has a
veth pair ``eth0``/``peer0`` (both up); ``module_agent`` is the same, shared by a module.
Both stop the agent with SIGTERM afterwards and fail the test if it does not exit 0 and
remove its socket; every process they started is killed in any case.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.pair.voxnode import problems_in_log
from tests.loopguard import export_agent_env

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VOXNODE = BIN / "voxnode"
VOXNODE_AGENT = BIN / "voxnode-agent"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Netns:
    name: str

    def ip(self, *args: str) -> str:
        """``ip -n NAME ARGS``; fails the test with ip's own message on error."""
        done = subprocess.run(["ip", "-n", self.name, *args], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode != 0:
            raise AssertionError(f"ip -n {self.name} {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def ip_json(self, *args: str) -> Any:
        """``ip -n NAME -j ARGS`` parsed (an empty answer is an empty list)."""
        text = self.ip("-j", *args).strip()
        return json.loads(text) if text else []

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (``ip netns exec``), from the repository root."""
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True,
                              text=True, timeout=timeout, cwd=REPO, check=False)

    def python(self, code: str, *args: str, timeout: float = 60) -> str:
        """Run Python code (the test's own interpreter) inside the namespace; its stdout."""
        done = self.run(sys.executable, "-c", code, *args, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"python in {self.name} failed:\n{done.stderr}")
        return done.stdout


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (ip)")


@contextlib.contextmanager
def _namespace() -> Iterator[Netns]:
    _require_root()
    name = f"vxt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        ns = Netns(name)
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


@pytest.fixture
def netns() -> Iterator[Netns]:
    with _namespace() as ns:
        yield ns


# --- the real agent in a namespace -----------------------------------------------------------


export_agent_env()  # every agent these tests start watches its loop (tests/loopguard.py)


class Agent:
    """A ``voxnode-agent`` process in ``ns``, with its state, socket and root under ``base``.

    ``proc`` is the agent itself: ``ip netns exec`` execs the command without forking.
    """

    def __init__(self, ns: Netns, base: Path) -> None:
        self.ns = ns
        self.base = base
        self.state_dir = base / "state"
        self.socket = base / "agent.sock"
        self.root = base / "root"
        self.log_path = base / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._spawned: list[subprocess.Popen[bytes]] = []

    # --- the agent process -------------------------------------------------------------------

    def command(self, *, state_dir: Path | None = None, socket_path: Path | None = None
                ) -> list[str]:
        """The agent's command line (another state dir or socket for a second instance)."""
        return [
            str(VOXNODE_AGENT),
            "--state-dir", str(state_dir or self.state_dir),
            "--socket", str(socket_path or self.socket),
            "--root", str(self.root),
        ]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the agent in the namespace; return once ``voxnode status`` answers."""
        assert not self.running, "the agent is already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns.name, *self.command()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )
        self._spawned.append(self.proc)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"voxnode-agent exited with {code} before answering; "
                                     f"its log:\n{self.log()}")
            if self._socket_accepts():
                done = self.cli("--json", "status", timeout=timeout)
                if done.returncode == 0:
                    json.loads(done.stdout)
                    return
                last = done.stderr
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"voxnode-agent did not answer `status` within {timeout:g} s "
                    f"({last.strip() or 'socket not accepting'}); its log:\n{self.log()}"
                )
            time.sleep(0.05)

    def _socket_accepts(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait; the exit status. SIGKILL (and fail) if it does not stop in time."""
        assert self.proc is not None, "the agent was never started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"voxnode-agent did not stop within {timeout:g} s of SIGTERM; its log:\n"
                f"{self.log()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the agent (no clean-up on its side) and reap it."""
        assert self.proc is not None, "the agent was never started"
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)

    def restart(self) -> None:
        """SIGTERM (must exit 0), then start again."""
        code = self.stop()
        assert code == 0, f"voxnode-agent exited with {code} on SIGTERM; log:\n{self.log()}"
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Teardown: SIGTERM the running agent and check it exits 0 and removes its socket;
        kill whatever this handle started in any case."""
        problems = []
        try:
            if self.running:
                code = self.stop()
                if code != 0:
                    problems.append(f"voxnode-agent exited with {code} on SIGTERM")
                elif self.socket.exists():
                    problems.append(f"voxnode-agent left its socket {self.socket} behind")
        except AssertionError as exc:
            problems.append(str(exc))
        else:
            problems += problems_in_log(self.log())
        finally:
            for proc in self._spawned:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(STOP_TIMEOUT_S)
        if problems:
            raise AssertionError("; ".join(problems) + f"\nagent log:\n{self.log()}")

    # --- the CLI -----------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``voxnode --socket SOCKET ARGS`` (from outside the namespace: a unix socket is
        reached through the file system)."""
        env = {k: v for k, v in os.environ.items() if k != "VOXNODE_SOCKET"}
        return subprocess.run([str(VOXNODE), "--socket", str(self.socket), *args],
                              capture_output=True, text=True, timeout=timeout, cwd=self.base,
                              env=env, check=False)

    def cli_json(self, *args: str, timeout: float = 60) -> Any:
        """``voxnode --json ARGS`` that must succeed; its parsed output."""
        done = self.cli("--json", *args, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"voxnode {' '.join(args)} exited with {done.returncode}:\n"
                                 f"{done.stdout}{done.stderr}")
        return json.loads(done.stdout)

    def write(self, name: str, text: str) -> Path:
        """A file (a document to apply) in the agent's base directory."""
        path = self.base / name
        path.write_text(text)
        return path


@contextlib.contextmanager
def _running_agent(ns: Netns) -> Iterator[Agent]:
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    ns.ip("link", "set", "eth0", "up")
    ns.ip("link", "set", "peer0", "up")
    # short: a unix socket path has at most 107 bytes
    base = Path(tempfile.mkdtemp(prefix="vxa-", dir="/tmp"))
    agent = Agent(ns, base)
    try:
        agent.start()
        yield agent
    finally:
        try:
            agent.close()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def agent(netns: Netns) -> Iterator[Agent]:
    """voxnode-agent running in a fresh namespace with a veth pair eth0/peer0 (both up)."""
    with _running_agent(netns) as handle:
        yield handle


@pytest.fixture(scope="module")
def module_agent() -> Iterator[Agent]:
    """Like ``agent``, one namespace and agent shared by the tests of a module."""
    with _namespace() as ns, _running_agent(ns) as handle:
        yield handle
