"""The MCS client against a real OpenVPN server playing MCS, in its own lab namespace.

``vxlab-mcs`` (10.77.0.200 on the lab bridge) runs ``openvpn`` as a server with a CA made
here; node1's agent installs a client bundle for it and runs ``openvpn-client@mcs``. The lab
has no licence, and the MCS client needs SMART_WORKING: for this module the agent of node1
runs a copy of the lab catalogue in which the MCS client is a base service (a runtime
drop-in under /run, removed at the end), so the licence stays honest everywhere else.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.node.conftest import REPO, attach_host, detach_host, lab_exec, node_write
from tests.unit.test_mcs_bundle import Pki

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]

NETNS = "vxlab-mcs"
PORT = "vx-mcs"
ADDRESS = "10.77.0.200"
DROPIN = "/run/systemd/system/voxnode-agent.service.d/zz-mcs-test.conf"
CATALOGUE = "/run/voxnode-mcs-test/catalogue.yaml"


def voxnode(*args: str) -> subprocess.CompletedProcess[str]:
    return lab_exec("node1", "voxnode", *args)


def status() -> dict[str, Any]:
    proc = voxnode("mcs", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def wait_for(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def restart_agent() -> None:
    assert lab_exec("node1", "systemctl", "daemon-reload").returncode == 0
    assert lab_exec("node1", "systemctl", "restart", "voxnode-agent").returncode == 0
    wait_for("the agent", lambda: voxnode("status").returncode == 0)


@pytest.fixture(scope="module")
def mcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    if subprocess.run(["which", "openvpn"], capture_output=True, check=False).returncode:
        pytest.skip("openvpn is not installed on the host (`make lab-apt`)")
    pki = Pki(now=dt.datetime.now(dt.UTC))
    work = tmp_path_factory.mktemp("mcs")
    pki.write_server(work)
    (work / "server.conf").write_text(
        "port 1194\nproto udp\ndev tun\ntopology subnet\nserver 10.78.0.0 255.255.255.0\n"
        "ca ca.crt\ncert server.crt\nkey server.key\ntls-auth ta.key 0\ndh none\n"
        "keepalive 2 10\npersist-key\nverb 3\n")
    server: subprocess.Popen[bytes] | None = None
    log = (work / "server.log").open("w")
    try:
        attach_host(NETNS, PORT, ADDRESS)
        server = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, "openvpn", "--cd", str(work), "--config",
             "server.conf"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for("the OpenVPN server", lambda: "Initialization Sequence Completed"
                 in (work / "server.log").read_text(), 20)
        catalogue = yaml.safe_load((REPO / "agent/data/catalogue-lab.yaml").read_text())
        for unit in catalogue["units"]:
            if unit["name"] == "mcs-vpn":
                unit["licence"] = "base"
        node_write("node1", CATALOGUE, yaml.safe_dump(catalogue))
        node_write("node1", DROPIN, f"[Service]\nEnvironment=VOXNODE_CATALOGUE={CATALOGUE}\n")
        restart_agent()
        yield pki
    finally:
        voxnode("mcs", "remove", "--yes")
        lab_exec("node1", "rm", "-rf", DROPIN, "/run/voxnode-mcs-test", "/tmp/mcs.ovpn",
                 "/tmp/bad.ovpn")
        restart_agent()
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()
        detach_host(NETNS, PORT)


def test_bad_bundle_is_refused_and_nothing_installed(mcs_server: Pki) -> None:
    node_write("node1", "/tmp/bad.ovpn", mcs_server.ovpn(f"remote {ADDRESS} 99999 udp",
                                                         extra="up /bin/sh"))
    proc = voxnode("mcs", "upload", "/tmp/bad.ovpn")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "bad.ovpn:5: remote: port '99999' is not a number from 1 to 65535" in proc.stderr
    assert "bad.ovpn:8: 'up' runs a program on the node and is refused for safety" in proc.stderr
    assert status()["status"] == "not-configured"
    assert lab_exec("node1", "test", "-e", "/etc/openvpn/client/mcs.conf").returncode == 1


def test_tunnel_comes_up_then_stop_and_start(mcs_server: Pki) -> None:
    node_write("node1", "/tmp/mcs.ovpn", mcs_server.ovpn(f"remote {ADDRESS} 1194 udp"))
    proc = voxnode("mcs", "upload", "/tmp/mcs.ovpn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for("the tunnel", lambda: status()["status"] == "connected", 40)
    data = status()
    assert data["tunnel"]["remote"] == f"{ADDRESS}:1194"
    assert data["tunnel"]["addresses"][0].startswith("10.78.0.")
    assert data["bundle"]["remote"] == f"{ADDRESS}:1194/udp"
    assert lab_exec("node1", "ping", "-c", "1", "-W", "2", "10.78.0.1").returncode == 0

    proc = voxnode("mcs", "stop")
    assert proc.returncode == 0, proc.stderr
    data = status()
    assert data["status"] == "stopped" and data["tunnel"]["addresses"] == []
    # the services reconcile honours the operator's STOP
    assert voxnode("services", "reconcile").returncode == 0
    assert lab_exec("node1", "systemctl", "is-active", "openvpn-client@mcs").stdout.strip() \
        == "inactive"

    assert voxnode("mcs", "start").returncode == 0
    wait_for("the tunnel again", lambda: status()["status"] == "connected", 40)
