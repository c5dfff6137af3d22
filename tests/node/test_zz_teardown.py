"""Runs last among the node tests: `lab down` twice leaves no namespace, container or mount."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.node.conftest import lab

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]


def _live_nspawns() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and argv[0].endswith(b"systemd-nspawn") and any(
            a.startswith(b"--network-namespace-path=/run/netns/vxlab-") for a in argv
        ):
            found.append(int(entry))
    return found


def test_zz_down_leaves_nothing() -> None:
    """Last in the module: `down` twice, then no namespace, container or mount remains."""
    assert lab("down").returncode == 0
    assert lab("down").returncode == 0
    netns = Path("/run/netns")
    left = [n for n in os.listdir(netns) if n.startswith("vxlab-")] if netns.exists() else []
    assert left == []
    assert _live_nspawns() == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "voxnode-lab/nodes" not in mounts
    status = lab("status", "--json")
    assert status.returncode == 1
    assert json.loads(status.stdout)["up"] is False
