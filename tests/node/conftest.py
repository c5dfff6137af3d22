"""Node tests: the two-node lab (image/lab.py) started once per session and removed at the end.

Needs root and the host tools `make lab` installs (mmdebstrap, systemd-nspawn); skipped
cleanly otherwise. The first run builds the cached rootfs (about a minute).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 600  # a cold rootfs build included


def lab(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m image.lab ARGS…` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "image.lab", *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def lab_exec(node: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return lab("exec", node, "--", *cmd)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def node_write(node: str, path: str, data: str) -> None:
    """Write ``data`` to ``path`` inside a lab node (parent directories created)."""
    proc = subprocess.run(
        [sys.executable, "-m", "image.lab", "exec", node, "--", "sh", "-c",
         f"mkdir -p $(dirname {path}) && cat > {path}"],
        input=data, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


LAB_BRIDGE_NS = "vxlab-br"


def attach_host(netns: str, port: str, address: str) -> None:
    """A host of its own on the lab LAN: namespace ``netns`` whose eth0 (``address``/24) is
    plugged into the lab bridge through ``port``. ``detach_host`` removes it."""
    sh("ip", "netns", "add", netns)
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    sh("ip", "link", "add", port, "netns", LAB_BRIDGE_NS, "type", "veth", "peer", "name",
       "eth0", "netns", netns)
    sh("ip", "-n", LAB_BRIDGE_NS, "link", "set", port, "master", "br0", "up")
    sh("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", netns, "link", "set", "eth0", "up")


def detach_host(netns: str, port: str) -> None:
    sh("ip", "-n", LAB_BRIDGE_NS, "link", "del", port, check=False)
    sh("ip", "netns", "del", netns, check=False)


@pytest.fixture(scope="session")
def lab_up() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    missing = [t for t in ("mmdebstrap", "systemd-nspawn", "nsenter", "ping")
               if shutil.which(t) is None]
    if missing:
        pytest.skip(f"host tools missing: {', '.join(missing)} (run `make lab-apt`)")
    proc = lab("up", timeout=UP_TIMEOUT_S)
    if proc.returncode != 0:
        lab("down")
        pytest.fail(f"lab up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    try:
        yield
    finally:
        lab("down")
