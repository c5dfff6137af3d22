"""The services subsystem on the in-memory systemd: decisions, reconcile, watch, role hook."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from agent.api import AgentContext, make_app
from agent.api.services import add_routes
from agent.engine import Engine
from agent.errors import Conflict, SubsystemError
from agent.events import EventLog
from agent.network.subsystem import NetworkSubsystem
from agent.paths import MCS_CLIENT_CONF
from agent.ports.files import FileTree
from agent.ports.hostname import MemoryHostname
from agent.ports.licence import LicencePort, NoLicence, StaticLicence
from agent.ports.netlink_memory import MemoryNetlink
from agent.ports.systemd_memory import MemorySystemd
from agent.services.catalogue import Role, load_catalogue, validate_catalogue
from agent.services.subsystem import ServicesSubsystem, StaticRole, Step, watch
from agent.state.document import validate_document
from agent.state.model import DesiredState
from agent.state.store import Store
from agent.subsystems.base import Change, texts

NO_LICENCE = "no licence is active on this node (licensing is not set up yet)"
LAB_UNITS = ("nginx.service", "mariadb.service", "kamailio.service", "coturn.service",
             "openvpn-client@mcs.service")
APPLIANCE_UNITS = ("nginx.service", "mariadb.service", "asterisk.service",
                   "tvox-webapi.service", "tvox-webclientproxy.service",
                   "tvox-webcustomerproxy.service", "rocketchat.service", "coturn.service",
                   "openvpn-client@mcs.service")


def state(mode: str = "standard") -> DesiredState:
    return validate_document({
        "schema_version": 1, "mode": mode,
        "network": {"hostname": "pbx1", "domain": "pbx.example.com",
                    "public_ip": "203.0.113.10",
                    "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}}},
    })


STANDARD, PURE_CLOUD = state(), state("pure-cloud")


class Node:
    def __init__(self, tmp_path: Path, catalogue: str = "lab",
                 licence: LicencePort | None = None, role: Role = Role.STANDALONE) -> None:
        self.systemd = MemorySystemd()
        self.systemd.install(*(LAB_UNITS if catalogue == "lab" else APPLIANCE_UNITS))
        self.files = FileTree(tmp_path)
        self.roles = StaticRole(role)
        self.events = EventLog()
        self.services = ServicesSubsystem(
            self.systemd, load_catalogue(catalogue), licence or NoLicence(), self.roles,
            files=self.files, events=self.events,
        )

    async def reasons(self, doc: DesiredState = STANDARD) -> dict[str, tuple[bool, str]]:
        return {d.entry.name: (d.wanted, d.reason) for d in await self.services.wanted(doc)}

    def running(self) -> set[str]:
        return {name for name, unit in self.systemd.units.items() if unit.active}

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events.recent()]


# --- what runs and why ------------------------------------------------------------------------


async def test_lab_without_licence_runs_the_base_units(tmp_path: Path) -> None:
    reasons = await Node(tmp_path).reasons()
    assert reasons == {
        "nginx": (True, "base service: runs without a licence; this node is standalone"),
        "database": (False, f"needs the licence module PBX; {NO_LICENCE}"),
        "pbx-engine": (True, "base service: runs without a licence; this node is standalone"),
        "turn": (False, "the co-resident TURN/STUN server is off in Standard mode "
                 f"(pure-cloud only); needs the licence module PBX; {NO_LICENCE}"),
        "mcs-vpn": (False, f"the MCS client is not configured ({MCS_CLIENT_CONF} is missing: "
                    "upload the VPN certificate from MCS); needs the licence module "
                    f"SMART_WORKING; {NO_LICENCE}"),
    }


async def test_appliance_without_licence_runs_nginx_only(tmp_path: Path) -> None:
    reasons = await Node(tmp_path, "appliance").reasons()
    assert [name for name, (wanted, _) in reasons.items() if wanted] == ["nginx"]
    assert reasons["pbx-engine"] == (False, f"needs the licence module PBX; {NO_LICENCE}")


async def test_appliance_with_a_licence(tmp_path: Path) -> None:
    node = Node(tmp_path, "appliance", StaticLicence(frozenset({"PBX", "PURE_CLOUD"})))
    reasons = await node.reasons()
    assert [n for n, (w, _) in reasons.items() if w] == [
        "nginx", "database", "pbx-engine", "webapi"]
    assert reasons["pbx-engine"] == (True, "licensed (PBX); this node is standalone")
    assert reasons["chat"] == (False, "needs the licence module CHAT; the active licence does "
                               "not include it (licensed modules: PBX, PURE_CLOUD)")
    cloud = await node.reasons(PURE_CLOUD)
    assert cloud["turn"] == (True, "licensed (PBX); the co-resident TURN/STUN server is on in "
                             "Pure Cloud (NAT 1:1) mode; this node is standalone")
    assert cloud["mcs-vpn"][1].startswith(
        "Standard mode only; the working mode is Pure Cloud (NAT 1:1); ")


async def test_roles(tmp_path: Path) -> None:
    node = Node(tmp_path, "appliance", StaticLicence(frozenset({"PBX"})), Role.SLAVE)
    reasons = await node.reasons()
    assert [n for n, (w, _) in reasons.items() if w] == ["nginx", "database"]
    assert reasons["pbx-engine"] == (
        False, "runs on master and standalone nodes only; this node is slave")
    node.roles.role = Role.OFF
    assert [n for n, (w, _) in (await node.reasons()).items() if w] == ["nginx"]


async def test_mcs_client_runs_once_configured(tmp_path: Path) -> None:
    node = Node(tmp_path, "lab", StaticLicence(frozenset({"SMART_WORKING"})))
    assert not (await node.reasons())["mcs-vpn"][0]
    await asyncio.to_thread(node.files.write_if_changed, MCS_CLIENT_CONF, "client\n", 0o600)
    assert (await node.reasons())["mcs-vpn"] == (
        True, "licensed (SMART_WORKING); the MCS client is configured; this node is standalone")


# --- converging -----------------------------------------------------------------------------


async def test_apply_stops_in_reverse_order_then_starts_in_order(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.systemd.install("mariadb.service", "coturn.service", active=True, enabled=True)
    changes = await node.services.apply(None, STANDARD)
    assert node.systemd.jobs == [
        ("stop", "coturn.service"), ("disable", "coturn.service"),
        ("stop", "mariadb.service"), ("disable", "mariadb.service"),
        ("enable", "nginx.service"), ("start", "nginx.service"),
        ("start", "kamailio.service"),  # role-bound: started by the agent, not at boot
    ]
    assert changes[0] == Change("stop", "coturn.service", "turn: found active/running")
    assert changes[-1] == Change("start", "kamailio.service", "pbx-engine: found inactive/dead")
    assert node.running() == {"nginx.service", "kamailio.service"}
    assert node.systemd.reloads == 3


async def test_reapplying_changes_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path)
    assert await node.services.apply(None, STANDARD)
    jobs = len(node.systemd.jobs)
    assert await node.services.apply(STANDARD, STANDARD) == []
    assert await node.services.apply(None, STANDARD) == []
    assert len(node.systemd.jobs) == jobs


async def test_masked_wanted_unit_is_unmasked(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.systemd.mask("kamailio.service")
    changes = await node.services.apply(None, STANDARD)
    assert Change("unmask", "kamailio.service", "pbx-engine") in changes
    assert "kamailio.service" in node.running()


async def test_mode_switch_starts_turn(tmp_path: Path) -> None:
    node = Node(tmp_path, "appliance", StaticLicence(frozenset({"PBX", "PURE_CLOUD"})))
    await node.services.apply(None, STANDARD)
    plan = node.services.plan(STANDARD, PURE_CLOUD, await node.services.observe(PURE_CLOUD))
    assert texts(plan.steps) == (
        "start turn (coturn.service): licensed (PBX); the co-resident TURN/STUN server is on "
        "in Pure Cloud (NAT 1:1) mode; this node is standalone",)
    assert await node.services.apply(STANDARD, PURE_CLOUD) == [
        Change("start", "coturn.service", "turn: found inactive/dead"),
    ]
    back = node.services.plan(PURE_CLOUD, STANDARD, await node.services.observe(STANDARD))
    assert texts(back.warnings) == (
        "turn stops: co-resident TURN/STUN server for WebRTC and mobile clients is "
        "unavailable",)


async def test_job_failure_names_the_unit_and_systemds_result(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.systemd.fail("kamailio.service", "start", "failed")
    with pytest.raises(SubsystemError) as info:
        await node.services.apply(None, STANDARD)
    assert info.value.message == (
        "systemd could not start kamailio.service (pbx-engine): the job ended with 'failed'; "
        "the unit is failed (failed), result 'exit-code'")
    assert info.value.details == {"unit": "kamailio.service", "job_result": "failed"}
    assert info.value.remedy == ("See `systemctl status kamailio.service` and "
                                 "`journalctl -u kamailio.service`.")


async def test_dbus_refusal_names_the_unit_and_systemds_answer(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.systemd.refuse("kamailio.service", "start", "org.freedesktop.DBus.Error.AccessDenied",
                        "Access denied")
    with pytest.raises(SubsystemError) as info:
        await node.services.apply(None, STANDARD)
    assert info.value.message == ("systemd refused to start kamailio.service: Access denied "
                                  "(org.freedesktop.DBus.Error.AccessDenied)")
    assert info.value.remedy == "voxnode-agent must run as root to manage units."


async def test_missing_unit_is_named(tmp_path: Path) -> None:
    node = Node(tmp_path)
    del node.systemd.units["kamailio.service"]
    with pytest.raises(SubsystemError, match=r"^kamailio.service \(pbx-engine\) should run but "
                       "is not installed on this node$"):
        await node.services.apply(None, STANDARD)


async def test_unit_already_wanted_does_not_fail_an_unrelated_change(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.services.apply(None, STANDARD)
    node.systemd.crash("kamailio.service")
    node.systemd.fail("kamailio.service", "start")
    assert await node.services.apply(STANDARD, STANDARD) == []
    assert node.events.recent()[-1].kind == "services.unit-failed"
    assert "kamailio.service" in node.events.recent()[-1].message


# --- the watch ------------------------------------------------------------------------------


async def test_unit_stopped_by_hand_is_reported_and_restarted(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.services.apply(None, STANDARD)
    node.systemd.stop_by_hand("kamailio.service")
    listing = await node.services.list_units(STANDARD)
    engine = next(u for u in listing["units"] if u["name"] == "pbx-engine")
    assert engine["state"] == "inactive (dead)" and engine["wanted"] is True
    assert engine["drift"] == "wanted but inactive (dead): the next reconcile starts it"
    assert await node.services.watch_step() == [
        Change("start", "kamailio.service", "pbx-engine: found inactive/dead")]
    event = node.events.recent()[-1]
    assert event.kind == "services.restarted"
    assert event.message == ("kamailio.service (pbx-engine: found inactive/dead): start done by "
                             "the periodic reconcile")
    assert await node.services.watch_step() == []


async def test_crashed_unit_is_reset_and_started(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.services.apply(None, STANDARD)
    node.systemd.crash("kamailio.service")
    node.systemd.jobs.clear()
    assert await node.services.watch_step() == [
        Change("start", "kamailio.service", "pbx-engine: found failed/failed")]
    assert node.systemd.jobs == [("reset-failed", "kamailio.service"),
                                 ("start", "kamailio.service")]


async def test_unit_started_by_hand_is_stopped(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.services.apply(None, STANDARD)
    await node.systemd.start("mariadb.service")
    assert await node.services.watch_step() == [
        Change("stop", "mariadb.service", "database: found active/running")]


async def test_watch_reports_a_failure_once(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.services.apply(None, STANDARD)
    node.systemd.crash("kamailio.service")
    node.systemd.fail("kamailio.service", "start")
    await node.services.watch_step()
    await node.services.watch_step()
    assert node.kinds().count("services.unit-failed") == 1
    node.systemd.heal("kamailio.service")
    assert len(await node.services.watch_step()) == 1
    assert "kamailio.service" in node.running()


async def test_watch_loop_restarts_a_stopped_unit(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.services.apply(None, STANDARD)
    task = asyncio.create_task(watch(node.services, interval=0.01))
    try:
        node.systemd.stop_by_hand("kamailio.service")
        for _ in range(200):  # the watch runs every 10 ms; give it up to 2 s
            await asyncio.sleep(0.01)
            if "services.restarted" in node.kinds():
                break
    finally:
        task.cancel()
    assert "services.restarted" in node.kinds()
    assert "kamailio.service" in node.running()


async def test_nothing_is_managed_before_the_first_apply(tmp_path: Path) -> None:
    node = Node(tmp_path)
    assert await node.services.watch_step() == []
    assert node.systemd.jobs == []
    listing = await node.services.list_units(None)
    assert {u["drift"] for u in listing["units"]} == {
        "not managed: this node has no configuration yet"}


# --- role changes ---------------------------------------------------------------------------


async def test_role_change_stops_in_reverse_and_starts_in_order(tmp_path: Path) -> None:
    node = Node(tmp_path, "appliance", StaticLicence(frozenset({"PBX"})))
    await node.services.apply(None, STANDARD)
    node.systemd.jobs.clear()
    node.roles.role = Role.SLAVE
    await node.services.on_role_change(Role.STANDALONE, Role.SLAVE)
    assert [j for j in node.systemd.jobs if j[0] == "stop"] == [
        ("stop", "tvox-webapi.service"), ("stop", "asterisk.service")]
    assert node.running() == {"nginx.service", "mariadb.service"}
    node.systemd.jobs.clear()
    node.roles.role = Role.MASTER
    await node.services.on_role_change(Role.SLAVE, Role.MASTER)
    assert [j for j in node.systemd.jobs if j[0] == "start"] == [
        ("start", "asterisk.service"), ("start", "tvox-webapi.service")]


async def test_role_change_needs_the_role_source_updated_first(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.services.apply(None, STANDARD)
    with pytest.raises(Conflict, match="the role source still says standalone, not slave"):
        await node.services.on_role_change(Role.STANDALONE, Role.SLAVE)


async def test_demotion_stops_everything_it_can(tmp_path: Path) -> None:
    data = yaml.safe_load(resources.files("agent").joinpath("data/catalogue-lab.yaml")
                          .read_text())
    assert data["units"][2]["name"] == "pbx-engine"
    data["units"][2]["timeout"] = 1  # its stop job hangs below
    node = Node(tmp_path)
    node.services.catalogue = validate_catalogue(data, "test")
    await node.services.apply(None, STANDARD)
    node.systemd.hang("kamailio.service", "stop")
    node.roles.role = Role.OFF
    with pytest.raises(SubsystemError) as info:
        await node.services.on_role_change(Role.STANDALONE, Role.OFF)
    assert [str(p) for p in info.value.problems] == [
        "kamailio.service: systemd did not finish the stop job of kamailio.service within 1 s"]
    assert info.value.message == "becoming off: 1 unit(s) did not converge"
    assert node.running() == {"nginx.service", "kamailio.service"}


# --- restart-all ----------------------------------------------------------------------------


async def test_restart_all_shows_progress(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.services.apply(None, STANDARD)
    node.systemd.jobs.clear()
    seen: list[Step] = []

    async def progress(step: Step) -> None:
        seen.append(step)

    steps = await node.services.restart_all(progress)
    assert [(s.action, s.unit, s.status) for s in steps] == [
        ("stop", "kamailio.service", "done"),
        ("reload", "nginx.service", "done"),
        ("start", "kamailio.service", "done"),
    ]
    assert [(s.index, s.total, s.status) for s in seen] == [
        (1, 3, "running"), (1, 3, "done"), (2, 3, "running"), (2, 3, "done"),
        (3, 3, "running"), (3, 3, "done")]
    assert node.systemd.jobs == [("stop", "kamailio.service"), ("reload", "nginx.service"),
                                 ("start", "kamailio.service")]


async def test_restart_all_goes_on_after_a_failure(tmp_path: Path) -> None:
    node = Node(tmp_path)
    await node.services.apply(None, STANDARD)
    node.systemd.fail("nginx.service", "reload")
    steps = await node.services.restart_all()
    assert [s.status for s in steps] == ["done", "failed", "done"]
    assert steps[1].message == ("systemd could not reload nginx.service (nginx): the job ended "
                                "with 'failed'; the unit is active (running), result 'success'")


async def test_restart_all_needs_a_configuration(tmp_path: Path) -> None:
    with pytest.raises(Conflict):
        await Node(tmp_path).services.restart_all()


# --- the API ----------------------------------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Node]]:
    node = Node(tmp_path)
    kernel = MemoryNetlink()
    kernel.add_link("eth0")
    network = NetworkSubsystem(kernel, node.files, MemoryHostname("localhost"))
    store = Store(tmp_path / "state")
    store.open()
    engine = Engine(store, [network, node.services], node.events)
    ctx = AgentContext(engine=engine, events=node.events, network=network,
                       licence=NoLicence(), started=time.time(), state_dir=str(tmp_path),
                       root=str(tmp_path))
    app = make_app(ctx)
    add_routes(app, node.services)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    yield client, node
    await client.close()


async def test_api(api: tuple[TestClient[Any, Any], Node]) -> None:
    client, node = api
    resp = await client.post("/v1/services/restart-all", json={})
    assert resp.status == 409
    assert (await client.post("/v1/config/apply", json={"document": STANDARD.to_document()}
                              )).status == 200
    listing = await (await client.get("/v1/services")).json()
    assert listing["catalogue"] == "lab" and listing["licence"]["active"] is False
    engine = next(u for u in listing["units"] if u["name"] == "pbx-engine")
    assert (engine["state"], engine["enabled"], engine["drift"]) == (
        "active (running)", "disabled", None)
    node.systemd.stop_by_hand("kamailio.service")
    out = await (await client.post("/v1/services/reconcile", json={})).json()
    assert out == {"changes": [{"action": "start", "target": "kamailio.service",
                                "detail": "pbx-engine: found inactive/dead"}], "failures": []}
    resp = await client.post("/v1/services/restart-all", json={})
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert len(lines) == 7 and lines[-1]["done"]["failed"] == 0
    assert [line["step"]["status"] for line in lines[:2]] == ["running", "done"]


async def test_role_bound_units_never_start_at_boot(tmp_path: Path) -> None:
    """A rebooted master must not run the PBX before the pair has decided its role."""
    node = Node(tmp_path)
    node.systemd.install("kamailio.service", enabled=True)
    changes = await node.services.apply(None, STANDARD)
    assert Change("disable", "kamailio.service", "pbx-engine: started by the agent") in changes
    assert "kamailio.service" in node.running()
    assert ("enable", "nginx.service") in node.systemd.jobs  # runs in every role: boots
