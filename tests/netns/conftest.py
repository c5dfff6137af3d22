"""Throwaway network namespaces for root-only tests; results are read back with ``ip -j``.

The ``netns`` fixture creates an empty namespace (only ``lo``, up) named ``vxt-<random>``
and always deletes it afterwards. Tests put whatever links they need inside and run code
in it with ``Netns.run`` / ``Netns.python``. Only 10.x addresses, and nothing leaves it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def netns() -> Iterator[Netns]:
    _require_root()
    name = f"vxt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        ns = Netns(name)
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
