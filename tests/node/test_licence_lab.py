"""Licensing in the lab: an unlicensed node runs only base units; activating starts the PBX
engine.

``vxlab-lic`` (10.77.0.201 on the lab bridge) runs ``voxnode-license-server`` signing with
the lab vendor key (``lab.rootfs.lab_vendor_key``: the rootfs ships its public half as
``/etc/voxnode/vendor.pub``) and the aiosmtpd mail sink it sends codes to. For this module
node1's agent runs a copy of the lab catalogue in which the PBX engine (Kamailio) needs the
``PBX`` module, as on the appliance (a runtime drop-in under /run), and its document points
``license.server_url`` at the server. Everything is put back at the end: the drop-in
removed, the document re-applied, the licence state deleted, the agent restarted.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from lab.rootfs import lab_vendor_key
from lab.util import Paths
from tests.licence.conftest import LicenceServerLab
from tests.node.conftest import REPO, attach_host, detach_host, lab_exec, node_write

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]

NETNS = "vxlab-lic"
PORT = "vx-lic"
ADDRESS = "10.77.0.201"
DROPIN = "/run/systemd/system/voxnode-agent.service.d/zz-licence-test.conf"
CATALOGUE = "/run/voxnode-licence-test/catalogue.yaml"
DOCUMENT = "/run/voxnode-licence-test/document.yaml"
LICENCE_STATE = "/var/lib/voxnode/licence"
EMAIL = "orders@acme.example"


def voxnode(*args: str) -> subprocess.CompletedProcess[str]:
    return lab_exec("node1", "voxnode", *args)


def voxnode_json(*args: str) -> Any:
    proc = voxnode("--json", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def is_active(unit: str) -> str:
    return lab_exec("node1", "systemctl", "is-active", unit).stdout.strip()


def pbx_engine() -> dict[str, Any]:
    units = voxnode_json("services", "list")["units"]
    found: dict[str, Any] = next(u for u in units if u["name"] == "pbx-engine")
    return found


def restart_agent() -> None:
    assert lab_exec("node1", "systemctl", "daemon-reload").returncode == 0
    assert lab_exec("node1", "systemctl", "restart", "voxnode-agent").returncode == 0
    wait_for("the agent", lambda: voxnode("status").returncode == 0)


def apply_document(document: dict[str, Any]) -> None:
    node_write("node1", DOCUMENT, yaml.safe_dump(document))
    proc = voxnode("config", "apply", DOCUMENT, "--comment", "licence lab test")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def licence_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LicenceServerLab]:
    private, public = lab_vendor_key(Paths.default())
    shipped = lab_exec("node1", "cat", "/etc/voxnode/vendor.pub")
    assert shipped.returncode == 0 and shipped.stdout == public.read_text(), (
        "node1 does not carry the lab vendor key as /etc/voxnode/vendor.pub: the lab runs an "
        "older rootfs (`make lab-down`, then run the node tests again)")
    work = tmp_path_factory.mktemp("licence")
    server = LicenceServerLab(work, host=ADDRESS, prefix=("ip", "netns", "exec", NETNS),
                              signing_key=private)
    original = voxnode_json("config", "show")["document"]
    try:
        attach_host(NETNS, PORT, ADDRESS)
        server.start()
        catalogue = yaml.safe_load((REPO / "agent/data/catalogue-lab.yaml").read_text())
        for unit in catalogue["units"]:
            if unit["name"] == "pbx-engine":
                unit["licence"] = ["PBX"]
        node_write("node1", CATALOGUE, yaml.safe_dump(catalogue))
        node_write("node1", DROPIN, f"[Service]\nEnvironment=VOXNODE_CATALOGUE={CATALOGUE}\n")
        restart_agent()
        apply_document({**original, "license": {"server_url": server.url}})
        yield server
    finally:
        try:
            apply_document(original)
        finally:
            lab_exec("node1", "systemctl", "stop", "voxnode-agent")
            lab_exec("node1", "rm", "-rf", DROPIN, "/run/voxnode-licence-test", LICENCE_STATE)
            restart_agent()
            server.stop()
            detach_host(NETNS, PORT)


def test_unlicensed_runs_base_units_and_activation_starts_the_pbx_engine(
        licence_server: LicenceServerLab) -> None:
    off = ("no licence is active on this node (state OFF: activate one with `voxnode license "
           "activate --serial S --email E`)")
    assert voxnode_json("status")["licence"]["state"] == "OFF"
    engine = pbx_engine()
    assert (engine["unit"], engine["wanted"]) == ("kamailio.service", False)
    assert engine["reason"] == f"needs the licence module PBX; {off}"
    wait_for("Kamailio stopped", lambda: is_active("kamailio.service") == "inactive")
    assert is_active("nginx.service") == "active"  # base units run

    serial = licence_server.create("PBX", EMAIL)
    sent = voxnode("license", "activate", "--serial", serial, "--email", EMAIL)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert voxnode_json("license", "show")["state"] == "CODE_SENT"
    verified = voxnode_json("license", "verify", "--code", licence_server.code())
    assert verified["licence"]["state"] == "ACTIVE"
    assert {"name": "pbx-engine", "unit": "kamailio.service", "action": "start"} in \
        verified["units"]
    assert verified["restart"]["failed"] == 0, verified["restart"]
    assert is_active("kamailio.service") == "active"
    engine = pbx_engine()
    assert engine["wanted"] is True and engine["reason"].startswith("licensed (PBX)")
    status = voxnode_json("status")["licence"]
    assert (status["state"], status["serial"]) == ("ACTIVE", serial)
    assert voxnode_json("license", "show")["fingerprint"]["source"] == "machine-id"

    removed = voxnode("license", "remove", "--yes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert voxnode_json("license", "show")["state"] == "GRACE"
    assert voxnode_json("status")["licence"]["state"] == "GRACE"
    assert voxnode("services", "reconcile").returncode == 0
    assert pbx_engine()["wanted"] is True
    assert is_active("kamailio.service") == "active"  # the grace period keeps the modules
    assert licence_server.mails()[-1]["subject"] == f"Licence {serial} removed from a node"
