"""The appliance's frozen agent (the RPM's PyInstaller + staticx binary) under a lab node's
real systemd: as ``Type=notify`` it reaches READY only with ``NotifyAccess=all`` — the
one-file binary runs the agent in a child of the process systemd starts — which is why
``voxnode-agent.service`` says ``all``. The agent runs with its own state directory,
socket and ``--root`` so the node's own agent is left alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from image import rpm as rpm_build
from lab.util import Paths
from tests.node.conftest import lab_exec

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]

NODE = "node2"
BINARY = "/usr/libexec/voxnode/voxnode"
OVERLAY_UNIT = (Path(__file__).resolve().parents[2] / "image/overlay/usr/lib/systemd/system"
                / "voxnode-agent.service")


def sh(script: str) -> str:
    proc = lab_exec(NODE, "/bin/sh", "-c", script)
    assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def frozen() -> Iterator[None]:
    binary = rpm_build.freeze(rpm_build.CACHE)  # cached; built (about 2 min) when missing
    dest = Paths.default().nodes / NODE / "root" / BINARY.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, dest)
    yield
    dest.unlink(missing_ok=True)


def start(unit: str, notify_access: str) -> tuple[int, str]:
    proc = lab_exec(
        NODE, "systemd-run", f"--unit={unit}", "--collect", "-p", "Type=notify",
        "-p", f"NotifyAccess={notify_access}", "-p", "TimeoutStartSec=25",
        "-p", "WatchdogSec=30", "-p", "Environment=VOXNODE_CATALOGUE=lab",
        BINARY, "voxnode-agent", "--state-dir", f"/var/tmp/{unit}/state",
        "--socket", f"/run/{unit}.sock", "--root", f"/var/tmp/{unit}/root",
        "--seed", "/nonexistent.yaml")
    return proc.returncode, proc.stdout + proc.stderr


def test_the_unit_file_allows_notify_from_children() -> None:
    assert "NotifyAccess=all" in OVERLAY_UNIT.read_text().splitlines()


@pytest.mark.usefixtures("frozen")
def test_frozen_agent_is_ready_under_systemd_with_notify_access_all() -> None:
    sh("mkdir -p /var/tmp/vx-frozen/root /var/tmp/vx-frozen/state")
    code, out = start("vx-frozen", "all")
    try:
        assert code == 0, out
        assert sh("systemctl show -p ActiveState --value vx-frozen").strip() == "active"
        status = lab_exec(NODE, BINARY, "voxnode", "--socket", "/run/vx-frozen.sock", "--json",
                          "status")
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        lab_exec(NODE, "systemctl", "stop", "vx-frozen")


@pytest.mark.usefixtures("frozen")
def test_with_notify_access_main_the_ready_message_is_refused() -> None:
    sh("mkdir -p /var/tmp/vx-main/root /var/tmp/vx-main/state")
    code, out = start("vx-main", "main")
    lab_exec(NODE, "systemctl", "stop", "vx-main")
    assert code != 0, out
