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
