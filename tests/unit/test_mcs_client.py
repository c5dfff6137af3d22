"""The MCS client on in-memory ports: install, STOP/START, remove, Pure Cloud, and its API."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.api import AgentContext, make_app
from agent.api.mcs import add_routes
from agent.cli.mcs import referenced_files
from agent.engine import Engine
from agent.errors import ConfirmationRequired, Conflict, InvalidInput
from agent.events import EventLog
from agent.mcs import MCS_STOP_FLAG, MCS_UNIT
from agent.mcs.client import PURE_CLOUD_REFUSAL, McsClient
from agent.mcs.tunnel import MemoryTunnel, view_from_management
from agent.mode.subsystem import ModeSubsystem
from agent.network.subsystem import NetworkSubsystem
from agent.paths import MCS_CERT_DIR, MCS_CLIENT_CONF
from agent.ports.files import FileTree, FileWriteError
from agent.ports.hostname import MemoryHostname
from agent.ports.licence import LicencePort, NoLicence, StaticLicence
from agent.ports.netlink_memory import MemoryNetlink
from agent.ports.systemd_memory import MemorySystemd
from agent.services.catalogue import load_catalogue
from agent.services.subsystem import ServicesSubsystem, StaticRole
from agent.state.document import validate_document
from agent.state.model import DesiredState
from agent.state.store import Store
from tests.unit.test_mcs_bundle import NOW, Pki

LAB_UNITS = ("nginx.service", "mariadb.service", "kamailio.service", "coturn.service", MCS_UNIT)
CERTS = {f"{MCS_CERT_DIR}/{n}" for n in ("ca.crt", "client.crt", "client.key", "tls-auth.key")}


def state(mode: str = "standard") -> DesiredState:
    return validate_document({
        "schema_version": 1, "mode": mode,
        "network": {"hostname": "pbx1", "domain": "pbx.example.com", "public_ip": "203.0.113.10",
                    "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}}},
    })


class Node:
    def __init__(self, root: Path, licence: LicencePort | None = None) -> None:
        self.files = FileTree(root)
        self.systemd = MemorySystemd()
        self.systemd.install(*LAB_UNITS)
        self.services = ServicesSubsystem(
            self.systemd, load_catalogue("lab"),
            licence or StaticLicence(frozenset({"SMART_WORKING"})), StaticRole(),
            files=self.files)
        self.state: DesiredState | None = state()
        self.tunnel = MemoryTunnel()
        self.mcs = McsClient(self.files, self.services, lambda: self.state, self.tunnel,
                             clock=lambda: NOW)

    async def configure(self) -> None:
        assert self.state is not None
        await self.services.apply(None, self.state)

    def mode_of(self, path: str) -> int:
        return self.files.path(path).stat().st_mode & 0o777

    def mcs_running(self) -> bool:
        return self.systemd.units[MCS_UNIT].active


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


async def test_upload_installs_and_starts(tmp_path: Path, pki: Pki) -> None:
    node = Node(tmp_path)
    await node.configure()
    assert not node.mcs_running()  # not configured yet: the catalogue does not want it
    answer = await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    assert set(answer["written"]) == CERTS | {MCS_CLIENT_CONF}
    assert answer["written"][-1] == MCS_CLIENT_CONF  # the configuration last
    assert answer["unit"]["running"] is True
    assert node.mcs_running()
    assert not node.systemd.units[MCS_UNIT].enabled  # role-bound: started by the agent
    for path in (*CERTS, MCS_CLIENT_CONF):
        assert node.mode_of(path) == 0o600, path
    assert node.mode_of(MCS_CERT_DIR) == 0o700
    status = await node.mcs.status()
    assert (status["status"], status["wanted"]) == ("connecting", True)
    node.tunnel.connect()
    status = await node.mcs.status()
    assert status["status"] == "connected"
    assert status["bundle"]["remote"] == "mcs.example.test:1194/udp"
    assert status["bundle"]["subject_cn"] == "pbx1.customer.test"
    assert status["tunnel"]["remote"] == "10.77.0.200:1194"


async def test_reupload_same_is_noop_new_one_restarts(tmp_path: Path, pki: Pki) -> None:
    node = Node(tmp_path)
    await node.configure()
    await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    jobs = len(node.systemd.jobs)
    again = await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    assert again["written"] == []
    assert ("restart", MCS_UNIT) not in node.systemd.jobs[jobs:]
    changed = await node.mcs.upload("mcs.ovpn", pki.ovpn(tls=False).encode())
    assert f"{MCS_CERT_DIR}/tls-auth.key (removed)" in changed["written"]
    assert not node.files.exists(f"{MCS_CERT_DIR}/tls-auth.key")
    assert ("restart", MCS_UNIT) in node.systemd.jobs[jobs:]


async def test_invalid_bundle_installs_nothing(tmp_path: Path, pki: Pki) -> None:
    node = Node(tmp_path)
    with pytest.raises(InvalidInput) as info:
        await node.mcs.upload("x.ovpn", pki.ovpn(extra="up /bin/sh").encode())
    assert [str(p) for p in info.value.problems] == [
        "x.ovpn:8: 'up' runs a program on the node and is refused for safety: remove it"]
    assert not node.files.exists(MCS_CLIENT_CONF) and not node.files.exists(MCS_CERT_DIR)


async def test_dry_run_changes_nothing(tmp_path: Path, pki: Pki) -> None:
    node = Node(tmp_path)
    answer = await node.mcs.upload("mcs.ovpn", pki.ovpn().encode(), dry_run=True)
    assert answer["would_write"][-1] == MCS_CLIENT_CONF
    assert not node.files.exists(MCS_CLIENT_CONF) and node.systemd.jobs == []


class FailingTree(FileTree):
    """A file tree whose writes of one path fail like a full disk (the real files otherwise)."""

    fail_on: str | None = None

    def write_if_changed(self, node_path: str, content: str | bytes, mode: int = 0o644,
                         group: str | None = None) -> bool:
        if node_path == self.fail_on:
            raise FileWriteError(f"cannot write {node_path}: No space left on device")
        return super().write_if_changed(node_path, content, mode, group)


async def test_failed_write_puts_back_the_previous_bundle(tmp_path: Path, pki: Pki) -> None:
    node = Node(tmp_path)
    tree = FailingTree(tmp_path)
    node.mcs = McsClient(tree, node.services, lambda: node.state, node.tunnel, clock=lambda: NOW)
    tree.fail_on = MCS_CLIENT_CONF  # the last write fails: the certificates go away again
    with pytest.raises(FileWriteError, match="No space left on device"):
        await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    assert not any(node.files.exists(p) for p in CERTS)
    assert not node.files.exists(MCS_CLIENT_CONF)
    tree.fail_on = None
    await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    old_conf = node.files.read(MCS_CLIENT_CONF)
    tree.fail_on = MCS_CLIENT_CONF  # a new bundle fails half-way: the previous one is back
    with pytest.raises(FileWriteError):
        await node.mcs.upload("mcs.ovpn", Pki(ca_name="Other CA").ovpn(tls=False).encode())
    assert node.files.read(f"{MCS_CERT_DIR}/ca.crt") == pki.ca_pem.encode()
    assert node.files.read(f"{MCS_CERT_DIR}/client.key") == pki.client_key_pem.encode()
    assert node.files.exists(f"{MCS_CERT_DIR}/tls-auth.key")
    assert node.files.read(MCS_CLIENT_CONF) == old_conf


async def test_stop_is_remembered_and_start_clears_it(tmp_path: Path, pki: Pki) -> None:
    node = Node(tmp_path)
    await node.configure()
    with pytest.raises(Conflict, match="the MCS client is not configured"):
        await node.mcs.stop()
    await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    await node.mcs.stop()
    assert node.files.exists(MCS_STOP_FLAG) and node.mode_of(MCS_STOP_FLAG) == 0o600
    assert not node.mcs_running() and not node.systemd.units[MCS_UNIT].enabled
    assert (await node.mcs.status())["status"] == "stopped"
    # a new upload is "upload the certificate and restart": it clears the STOP
    await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    assert not node.files.exists(MCS_STOP_FLAG) and node.mcs_running()
    await node.mcs.stop()
    started = await node.mcs.start()
    assert started["operator_stopped"] is False and node.mcs_running()
    assert not node.files.exists(MCS_STOP_FLAG)


async def test_start_without_licence_says_why_and_keeps_the_stop(tmp_path: Path, pki: Pki) -> None:
    node = Node(tmp_path, licence=NoLicence())
    await node.configure()
    answer = await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    assert answer["unit"]["running"] is False
    assert "needs the licence module SMART_WORKING" in answer["unit"]["why"]
    await node.mcs.stop()
    with pytest.raises(Conflict) as info:
        await node.mcs.start()
    assert info.value.message.startswith(
        "the MCS client cannot run on this node: needs the licence module SMART_WORKING; ")
    assert node.files.exists(MCS_STOP_FLAG) and not node.mcs_running()
    assert (await node.mcs.status())["status"] == "stopped"


async def test_pure_cloud_refuses_upload_and_the_switch_removes_it(
    tmp_path: Path, pki: Pki
) -> None:
    node = Node(tmp_path)
    await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    await node.mcs.stop()
    mode = ModeSubsystem(node.files, StaticLicence(frozenset({"PURE_CLOUD"})))
    changes = await mode.apply(state(), state("pure-cloud"))
    assert [(c.action, c.target) for c in changes if c.action == "delete"] == [
        ("delete", MCS_CLIENT_CONF), ("delete", MCS_CERT_DIR)]
    assert not node.files.exists(MCS_STOP_FLAG)  # the STOP goes with the configuration
    node.state = state("pure-cloud")
    with pytest.raises(Conflict) as info:
        await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    assert info.value.message == PURE_CLOUD_REFUSAL
    assert not node.files.exists(MCS_CLIENT_CONF)
    assert (await node.mcs.status())["status"] == "not-configured"


async def test_remove_needs_yes(tmp_path: Path, pki: Pki) -> None:
    node = Node(tmp_path)
    await node.configure()
    await node.mcs.upload("mcs.ovpn", pki.ovpn().encode())
    with pytest.raises(ConfirmationRequired):
        await node.mcs.remove(yes=False)
    assert node.files.exists(MCS_CLIENT_CONF)
    answer = await node.mcs.remove(yes=True)
    assert answer["removed"] == [MCS_CLIENT_CONF, MCS_CERT_DIR]
    assert not node.mcs_running()
    assert (await node.mcs.remove(yes=True))["removed"] == []


def test_management_answers_become_a_view() -> None:
    view = view_from_management(
        "tun-mcs", ["10.78.0.2"],
        ["1700000000,CONNECTING,,,,,,,", "1700000005,CONNECTED,SUCCESS,10.78.0.2,10.77.0.200,"
         "1194,10.77.0.11,43000,"], "SUCCESS: nclients=0,bytesin=5120,bytesout=4096")
    assert (view.state, view.since, view.remote, view.bytes_in, view.bytes_out) == (
        "CONNECTED", 1700000005.0, "10.77.0.200:1194", 5120, 4096)
    assert view.connected
    assert not view_from_management("tun-mcs", [], ["1700000000,WAIT,,,,,,,"], "").connected


def test_cli_sends_the_files_an_ovpn_names(tmp_path: Path, pki: Pki) -> None:
    conf = tmp_path / "c.ovpn"
    conf.write_text("client\ndev tun\nremote 10.77.0.200\nca ca.crt\ncert c.crt\nkey c.key\n")
    (tmp_path / "ca.crt").write_text(pki.ca_pem)
    found = referenced_files(str(conf), conf.read_bytes())
    assert list(found) == ["ca.crt"]
    assert base64.b64decode(found["ca.crt"]) == pki.ca_pem.encode()


# --- the API ----------------------------------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Node]]:
    node = Node(tmp_path / "root")
    kernel = MemoryNetlink()
    network = NetworkSubsystem(kernel, node.files, MemoryHostname("pbx1"))
    store = Store(tmp_path / "state")
    store.open()
    events = EventLog()
    engine = Engine(store, [network], events)
    ctx = AgentContext(engine=engine, events=events, network=network, licence=NoLicence(),
                       started=time.time(), state_dir=str(tmp_path), root=str(tmp_path))
    app = make_app(ctx)
    add_routes(app, node.mcs)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    await node.configure()
    yield client, node
    await client.close()


async def test_api_upload_status_stop_start_remove(
    api: tuple[TestClient[Any, Any], Node], pki: Pki
) -> None:
    client, node = api
    body = {"name": "mcs.ovpn", "data": base64.b64encode(pki.ovpn().encode()).decode()}
    resp = await client.post("/v1/mcs/bundle", json=body)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["summary"]["remote"] == "mcs.example.test:1194/udp"
    assert (await (await client.get("/v1/mcs")).json())["status"] == "connecting"
    assert (await client.post("/v1/mcs/stop", json={})).status == 200
    assert (await (await client.get("/v1/mcs")).json())["status"] == "stopped"
    assert (await client.post("/v1/mcs/start", json={})).status == 200
    assert node.mcs_running()
    resp = await client.delete("/v1/mcs/bundle", json={})
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "confirmation_required"
    resp = await client.delete("/v1/mcs/bundle", json={"yes": True})
    assert (await resp.json())["removed"] == [MCS_CLIENT_CONF, MCS_CERT_DIR]


async def test_api_bad_uploads(api: tuple[TestClient[Any, Any], Node]) -> None:
    client, _ = api
    resp = await client.post("/v1/mcs/bundle", json={"data": "%%%", "files": {"a": 1}})
    assert resp.status == 422
    problems = (await resp.json())["error"]["problems"]
    assert problems == [{"path": "data", "message": "is not valid base64"},
                        {"path": "files.a", "message": "must be a base64 string"}]
    resp = await client.post("/v1/mcs/bundle",
                             json={"name": "x.ovpn", "data": base64.b64encode(b"\0").decode()})
    assert resp.status == 422
    assert (await resp.json())["error"]["problems"][0]["path"] == "x.ovpn"
