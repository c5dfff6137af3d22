"""The HTTP/JSON API in-process: the real engine, store and subsystems on in-memory ports."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.api import AgentContext, make_app
from agent.cli import output
from agent.engine import Engine
from agent.events import EventLog
from agent.mode.subsystem import ModeSubsystem
from agent.network.subsystem import NetworkSubsystem
from agent.ports.files import FileTree
from agent.ports.hostname import MemoryHostname
from agent.ports.licence import NoLicence, StaticLicence
from agent.ports.netlink_memory import MemoryNetlink
from agent.state.store import Store

DOC = {
    "schema_version": 1,
    "network": {"hostname": "pbx1", "domain": "pbx.example.com", "public_ip": "203.0.113.10",
                "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}},
                "gateway": "10.0.0.1"},
}


async def make_client(tmp_path: Path, licensed: bool = False) -> TestClient[Any, Any]:
    kernel = MemoryNetlink()
    kernel.add_link("eth0")
    files = FileTree(tmp_path / "root")
    licence = StaticLicence(frozenset({"PURE_CLOUD"})) if licensed else NoLicence()
    network = NetworkSubsystem(kernel, files, MemoryHostname("localhost"))
    store = Store(tmp_path / "state")
    store.open()
    events = EventLog()
    engine = Engine(store, [network, ModeSubsystem(files, licence)], events)
    ctx = AgentContext(engine=engine, events=events, network=network, licence=licence,
                       started=time.time(), state_dir=str(tmp_path), root=str(tmp_path))
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(ctx)))
    await client.start_server()
    return client


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    client = await make_client(tmp_path)
    yield client
    await client.close()


JSON = {"Content-Type": "application/json"}


async def error_of(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status
    body = await resp.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return dict(body["error"])


async def test_unconfigured_node(api: TestClient[Any, Any]) -> None:
    status = await (await api.get("/v1/status")).json()
    assert status["revision"] is None and status["licence"]["active"] is False
    err = await error_of(await api.get("/v1/network"), 422, "invalid_input")
    assert err["problems"] == [
        {"path": "", "message": "apply a full document first: voxnode config apply FILE"}
    ]


async def test_apply_show_history(api: TestClient[Any, Any]) -> None:
    resp = await api.post("/v1/config/apply", json={"document": DOC})
    assert resp.status == 200
    out = await resp.json()
    assert out["revision"]["revision"] == 1
    assert {"action": "add", "target": "address 10.0.0.11/24 on eth0", "detail": ""} in (
        out["changes"]["network"]
    )
    shown = await (await api.get("/v1/config")).json()
    assert shown["document"]["network"]["hostname"] == "pbx1"
    history = await (await api.get("/v1/config/history")).json()
    assert [r["source"] for r in history["revisions"]] == ["apply"]


async def test_yaml_body_errors_name_the_source(api: TestClient[Any, Any]) -> None:
    resp = await api.post("/v1/config/apply", json={"yaml": "a: [", "source": "x.yaml"})
    err = await error_of(resp, 422, "invalid_input")
    assert err["problems"][0]["path"] == "x.yaml:1:5"


async def test_bad_requests(api: TestClient[Any, Any]) -> None:
    err = await error_of(await api.post("/v1/config/apply", data=b"{", headers=JSON), 422,
                         "invalid_input")
    assert err["message"] == "the request body is not JSON"
    deep = b"[" * 200_000  # deeper than the JSON decoder goes: still a 422, not a 500
    err = await error_of(await api.post("/v1/mode", data=deep, headers=JSON), 422, "invalid_input")
    assert err["message"] == "the request body is not JSON"
    err = await error_of(
        await api.post("/v1/config/apply", json={"document": DOC, "force": True}),
        422, "invalid_input",
    )
    assert err["problems"][0]["path"] == "force"
    err = await error_of(
        await api.post("/v1/config/apply", json={"document": DOC, "yaml": "x"}),
        422, "invalid_input",
    )
    err = await error_of(
        await api.post("/v1/config/apply", json={"document": DOC, "dry_run": "yes"}),
        422, "invalid_input",
    )
    assert err["problems"] == [{"path": "dry_run", "message": "must be true or false"}]
    await error_of(await api.get("/v1/nothing"), 404, "not_found")
    await error_of(await api.delete("/v1/status"), 405, "not_found")
    err = await error_of(await api.get("/v1/config/revisions/x"), 422, "invalid_input")
    # digits that are not ASCII (superscript two, Arabic-Indic twelve) and a number too
    # long to be a revision are not numbers either
    for raw in ("%C2%B2", "%D9%A1%D9%A2", "9" * 5000):
        err = await error_of(await api.get(f"/v1/config/revisions/{raw}"), 422,
                             "invalid_input")
        assert err["problems"][0]["path"] == "revision"


async def test_network_set_and_missing_interface(api: TestClient[Any, Any]) -> None:
    await api.post("/v1/config/apply", json={"document": DOC})
    resp = await api.post("/v1/network", json={"set": {"dns": "10.0.0.2,10.0.0.3"}})
    assert resp.status == 200
    shown = await (await api.get("/v1/network")).json()
    assert shown["desired"]["dns"] == ["10.0.0.2", "10.0.0.3"]
    assert shown["observed"]["drift"] == []
    resp = await api.post("/v1/network", json={"set": {"interfaces.eth9.addresses": "10.9.0.1/24"}})
    err = await error_of(resp, 424, "apply_failed")
    assert "eth9" in err["message"] and "previous revision was re-applied" in err["message"]
    history = await (await api.get("/v1/config/history")).json()
    assert len(history["revisions"]) == 2


async def test_mode_needs_licence(api: TestClient[Any, Any]) -> None:
    await api.post("/v1/config/apply", json={"document": DOC})
    err = await error_of(await api.post("/v1/mode", json={"mode": "pure-cloud"}),
                         422, "invalid_input")
    assert err["problems"] == [{
        "path": "mode",
        "message": "pure-cloud needs the PURE_CLOUD licence module; no licence is active on "
        "this node (licensing is not set up yet)",
    }]
    shown = await (await api.get("/v1/mode")).json()
    assert shown["mode"] == "standard"
    assert shown["unavailable"][0]["mode"] == "pure-cloud"
    err = await error_of(await api.post("/v1/mode", json={"mode": "cloud"}), 422, "invalid_input")


async def test_mode_switch_needs_yes_then_deletes_mcs(tmp_path: Path) -> None:
    api = await make_client(tmp_path, licensed=True)
    try:
        await api.post("/v1/config/apply", json={"document": DOC})
        mcs = tmp_path / "root/etc/openvpn/client/mcs.conf"
        mcs.parent.mkdir(parents=True)
        mcs.write_text("client\n")
        err = await error_of(await api.post("/v1/mode", json={"mode": "pure-cloud"}),
                             409, "confirmation_required")
        assert "MCS" in err["problems"][0]["message"]
        assert mcs.exists()
        resp = await api.post("/v1/mode", json={"mode": "pure-cloud", "yes": True})
        assert resp.status == 200
        assert not mcs.exists()
        assert (await (await api.get("/v1/mode")).json())["mode"] == "pure-cloud"
    finally:
        await api.close()


async def test_confirm_and_rollback_endpoints(api: TestClient[Any, Any]) -> None:
    await api.post("/v1/config/apply", json={"document": DOC})
    await error_of(await api.post("/v1/config/confirm", json={}), 409, "conflict")
    resp = await api.post("/v1/network", json={"set": {"hostname": "pbx2"},
                                               "confirm_within": 60})
    assert (await resp.json())["confirm_deadline"] is not None
    status = await (await api.get("/v1/status")).json()
    assert status["pending_confirmation"]["revision"] == 2
    assert (await api.post("/v1/config/confirm", json={})).status == 200
    resp = await api.post("/v1/config/rollback", json={"revision": 1})
    out = await resp.json()
    assert out["revision"]["source"] == "rollback"
    await error_of(await api.post("/v1/config/rollback", json={"revision": 42}),
                   404, "not_found")
    await error_of(await api.post("/v1/config/rollback", json={"revision": "1"}),
                   422, "invalid_input")


async def test_a_plan_carries_code_params_and_text(
    api: TestClient[Any, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    await api.post("/v1/config/apply", json={"document": DOC})
    resp = await api.post("/v1/network", json={"set": {"hostname": "pbx2"},
                                               "dry_run": True})
    out = await resp.json()
    [network] = out["plan"]["subsystems"]
    assert network == {
        "subsystem": "network",
        "steps": [
            {"code": "hostname-change", "params": {"old": "pbx1", "new": "pbx2"},
             "text": "hostname pbx1 → pbx2"},
        ],
        "warnings": [],
        "acknowledge": [],
    }
    # the CLI shows a person the sentences only, as before
    output.outcome(out)
    assert "  network: hostname pbx1 → pbx2\n" in capsys.readouterr().out


async def test_the_cli_shows_warnings_and_losses_as_sentences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = await make_client(tmp_path, licensed=True)
    mcs_conf = tmp_path / "root" / "etc" / "openvpn" / "client" / "mcs.conf"
    mcs_conf.parent.mkdir(parents=True)
    mcs_conf.write_text("client\nremote mcs.example.net 1194\n")  # an MCS client to lose
    try:
        await api.post("/v1/config/apply", json={"document": DOC})
        resp = await api.post("/v1/mode", json={"mode": "pure-cloud", "dry_run": True})
        out = await resp.json()
    finally:
        await api.close()
    [mode] = out["plan"]["subsystems"]
    assert mode["acknowledge"][0]["code"] == "mcs-client-lost"
    assert out["plan"]["acknowledge"] == mode["acknowledge"]
    output.outcome(out)
    shown = capsys.readouterr().out
    assert "  mode: working mode: Standard → Pure Cloud (NAT 1:1)\n" in shown
    assert ("  warning (mode): The new SIP transport takes effect when the PBX engine "
            "restarts: calls in progress are dropped then.\n") in shown
    assert "  will be lost (mode): Switching to Pure Cloud deletes the MCS client" in shown
    assert "'code'" not in shown


# what a web page can make a browser send without asking first, and a body with no type
CROSS_SITE_BODIES = [
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"yes=true",
     "'application/x-www-form-urlencoded' is not application/json"),
    ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--",
     "'multipart/form-data; boundary=x' is not application/json"),
    ({"Content-Type": "text/plain"}, b'{"yes": true}', "'text/plain' is not application/json"),
    ({}, None, "missing; expected application/json"),
]


@pytest.mark.parametrize(("headers", "body", "problem"), CROSS_SITE_BODIES)
async def test_a_request_that_acts_needs_a_json_body(
        api: TestClient[Any, Any], headers: dict[str, str], body: bytes | None,
        problem: str) -> None:
    await api.post("/v1/config/apply", json={"document": DOC})
    head = (await (await api.get("/v1/config")).json())
    acting = sorted({(r.method, r.resource.canonical.replace("{id}", "1"))
                     for r in api.app.router.routes()
                     if r.method in ("POST", "PUT", "PATCH", "DELETE") and r.resource})
    assert ("POST", "/v1/config/confirm") in acting and len(acting) >= 5
    for method, path in acting:
        resp = await api.request(method, path, data=body, headers=headers,
                                 skip_auto_headers=["Content-Type"] if not headers else None)
        err = await error_of(resp, 415, "unsupported_media_type")
        assert err["message"] == f"{method} {path} takes a JSON body"
        assert err["problems"] == [{"path": "Content-Type", "message": problem}]
    assert (await (await api.get("/v1/config")).json()) == head  # nothing acted
    # an unknown route stays a 404, whatever its body
    await error_of(await api.post("/v1/nothing", data=b"x"), 404, "not_found")
