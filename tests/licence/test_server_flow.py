"""The Security Update client against a real licence server process (and real SMTP).

The node side runs in-process so that its clock can be injected: the licence state
directory, the vendor key and the machine-id live under tmp_path, the services are the
real services subsystem over the in-memory systemd with the appliance catalogue.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from agent.errors import Conflict, InvalidInput
from agent.licence.client import BadResponse, ServerRefused, ServerUnreachable
from agent.licence.fingerprint import node_fingerprint
from agent.licence.manager import LicenceManager
from agent.ports.files import FileTree
from agent.ports.systemd_memory import MemorySystemd
from agent.services.catalogue import load_catalogue
from agent.services.subsystem import ServicesSubsystem, StaticRole
from agent.state.document import validate_document
from agent.state.model import DesiredState
from tests.licence.conftest import LicenceServerLab, free_port

DAY = 86400.0
EMAIL = "orders@acme.example"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Node:
    """One node: state dir, root (machine-id, vendor key), services over fake systemd."""

    def __init__(self, base: Path, server: LicenceServerLab, machine_id: str, *,
                 url: str | None = None, network: dict[str, Any] | None = None) -> None:
        self.base, self.clock = base, Clock()
        self.root = base / "root"
        (self.root / "etc/voxnode").mkdir(parents=True, exist_ok=True)
        (self.root / "etc/machine-id").write_text(machine_id + "\n")
        shutil.copy(server.public_key, self.root / "etc/voxnode/vendor.pub")
        self.document = {
            "schema_version": 1,
            "network": network or {"hostname": "pbx1",
                                   "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}}},
            "license": {"server_url": url or server.url},
        }
        self.state: DesiredState = validate_document(self.document)
        self.systemd = MemorySystemd()
        catalogue = load_catalogue("appliance")
        self.systemd.install(*(e.unit for e in catalogue.units))
        files = FileTree(self.root)
        self.services = ServicesSubsystem(self.systemd, catalogue, self._port(), StaticRole(),
                                          files=files)
        self.manager = LicenceManager(
            base / "state", files, lambda: self.state, fingerprint=lambda: node_fingerprint(
                self.root), catalogue=catalogue, services=self.services, clock=self.clock)

    def _port(self) -> Any:
        node = self

        class Port:
            async def current(self) -> Any:
                return await node.manager.current()
        return Port()

    async def configure(self) -> None:
        await self.services.apply(None, self.state)

    def running(self) -> set[str]:
        return {u.name for u in self.systemd.units.values() if u.active}

    def installed_bytes(self) -> bytes | None:
        return self.manager.store.read_licence()


@pytest.fixture
def node(tmp_path: Path, licence_server: LicenceServerLab) -> Node:
    return Node(tmp_path / "node1", licence_server, "1" * 32)


async def activate(node: Node, server: LicenceServerLab, serial: str) -> dict[str, Any]:
    await node.manager.activate(serial, EMAIL)
    return await node.manager.verify(server.code())


async def test_full_flow_starts_the_licensed_units(node: Node,
                                                   licence_server: LicenceServerLab) -> None:
    await node.configure()
    assert node.running() == {"nginx.service"}
    assert (await node.manager.current()).active is False
    assert node.manager.show()["state"] == "OFF"
    serial = licence_server.create("PBX,WEB_CLIENT_SMART=10", EMAIL, "--valid-days", "365")
    sent = await node.manager.activate(serial, EMAIL)
    assert sent["sent_to"] == "o***@acme.example" and sent["expires_in"] == 900
    assert node.manager.show()["state"] == "CODE_SENT"
    mail = licence_server.mails()[-1]
    assert mail["to"] == [EMAIL] and serial in mail["subject"]
    result = await node.manager.verify(licence_server.code())
    shown = result["licence"]
    assert shown["state"] == "ACTIVE" and shown["serial"] == serial
    assert shown["company"] == "ACME S.p.A." and shown["email"] == EMAIL
    assert {m["name"]: m["limit"] for m in shown["modules"]} == {"PBX": None,
                                                                 "WEB_CLIENT_SMART": 10}
    assert shown["valid_until"] == pytest.approx(shown["issued_at"] + 365 * DAY, abs=120)
    assert {"name": "pbx-engine", "unit": "asterisk.service", "action": "start"} in \
        result["units"]
    assert result["restart"]["failed"] == 0
    assert {"asterisk.service", "mariadb.service", "tvox-webapi.service"} <= node.running()
    assert "tvox-webclientproxy.service" not in node.running()  # needs WEB_CLIENT


async def test_unknown_serial(node: Node) -> None:
    with pytest.raises(ServerRefused) as err:
        await node.manager.activate("VX-NOPE-NOPE-NOPE", EMAIL)
    assert err.value.message == ("the licence server refused: serial VX-NOPE-NOPE-NOPE is not "
                                 "known to the licence server")
    assert node.manager.show()["state"] == "OFF"


async def test_wrong_email(node: Node, licence_server: LicenceServerLab) -> None:
    serial = licence_server.create("PBX")
    with pytest.raises(ServerRefused, match="the email does not match the one given with the "
                       "order of this serial"):
        await node.manager.activate(serial, "someone@else.example")
    assert licence_server.mails() == []


async def test_wrong_code_five_times_locks(node: Node, licence_server: LicenceServerLab) -> None:
    serial = licence_server.create("PBX")
    await node.manager.activate(serial, EMAIL)
    good = licence_server.code()
    bad = "000000" if good != "000000" else "111111"
    for left in (4, 3, 2, 1):
        with pytest.raises(ServerRefused) as err:
            await node.manager.verify(bad)
        word = "try" if left == 1 else "tries"
        assert err.value.message == (f"the licence server refused: the verification code is "
                                     f"wrong ({left} {word} left)")
    for _ in range(2):  # the fifth wrong try locks, and then even the right code is refused
        with pytest.raises(ServerRefused) as err:
            await node.manager.verify(bad if _ == 0 else good)
        assert err.value.message == ("the licence server refused: the verification code is "
                                     "locked after 5 wrong tries; request a new code")
    assert node.installed_bytes() is None
    assert node.manager.show()["state"] == "CODE_SENT"
    await node.manager.activate(serial, EMAIL)  # a new code unlocks
    assert (await node.manager.verify(licence_server.code()))["licence"]["state"] == "ACTIVE"


async def test_expired_code(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    server = LicenceServerLab(tmp_path / "srv", code_ttl=1)
    try:
        server.start()
        node = Node(tmp_path / "n", server, "2" * 32)
        serial = server.create("PBX")
        await node.manager.activate(serial, EMAIL)
        await asyncio.sleep(1.5)
        with pytest.raises(ServerRefused) as err:
            await node.manager.verify(server.code())
        assert err.value.message == ("the licence server refused: the verification code has "
                                     "expired (codes are valid for 1 s); request a new one")
        assert node.installed_bytes() is None
    finally:
        server.stop()


async def test_tampered_licence_file_is_refused(node: Node,
                                                licence_server: LicenceServerLab) -> None:
    await activate(node, licence_server, licence_server.create("PBX"))
    path = node.manager.store.licence_path
    data = bytearray(path.read_bytes())
    index = data.index(b'"PBX"') + 1
    data[index] = ord("Q")  # one byte: PBX -> QBX
    path.write_bytes(bytes(data))
    view = await node.manager.current()
    assert view.active is False
    assert view.reason == ("no licence is active on this node (the installed licence is refused: "
                           "the licence signature does not verify: the licence was altered or "
                           "was not issued by this vendor)")
    assert path.read_bytes() == bytes(data)  # kept as evidence, never trusted


async def test_licence_for_another_fingerprint(node: Node,
                                               licence_server: LicenceServerLab) -> None:
    serial = licence_server.create("PBX")
    await node.manager.activate(serial, EMAIL)
    code = licence_server.code()
    moved = Node(node.base, licence_server, "3" * 32)  # same state dir, another machine
    with pytest.raises(ServerRefused) as err:
        await moved.manager.verify(code)
    assert err.value.message == ("the licence server refused: no activation is pending for "
                                 "this serial on this node; request a code first")
    assert node.installed_bytes() is None
    await node.manager.verify(code)
    installed = node.installed_bytes()
    moved = Node(node.base, licence_server, "3" * 32)
    view = await moved.manager.current()
    assert view.active is False
    assert view.reason.startswith("no licence is active on this node (the installed licence is "
                                  "refused: the licence is bound to another node (fingerprint "
                                  f"{node.manager.fingerprint().value}; this node is sha256:")
    assert moved.installed_bytes() == installed


async def test_second_activation_of_an_active_serial(tmp_path: Path, node: Node,
                                                     licence_server: LicenceServerLab) -> None:
    serial = licence_server.create("PBX")
    await activate(node, licence_server, serial)
    before = node.installed_bytes()
    second = Node(tmp_path / "node2", licence_server, "4" * 32)
    with pytest.raises(ServerRefused) as err:
        await second.manager.activate(serial, EMAIL)
    assert err.value.message == (f"the licence server refused: serial {serial} is active on "
                                 "another node; remove the licence there first (voxnode license "
                                 "remove)")
    assert second.manager.show()["state"] == "OFF"
    assert node.installed_bytes() == before


async def test_server_down_keeps_the_licence_and_raises_the_alarm(
        node: Node, licence_server: LicenceServerLab) -> None:
    await activate(node, licence_server, licence_server.create("PBX"))
    before = node.installed_bytes()
    licence_server.stop()
    for attempt in (1, 2, 3):
        node.clock.now += 12 * 3600
        with pytest.raises(ServerUnreachable) as err:
            await node.manager.check()
        assert err.value.message.startswith(f"cannot reach the licence server at "
                                            f"{licence_server.url}: ")
        shown = node.manager.show()
        assert shown["state"] == "ACTIVE" and shown["failed_checks"] == attempt
    assert shown["alarm"].startswith("the licence server has not answered 3 checks in a row")
    assert shown["last_successful_check"] == node.clock.now - 36 * 3600
    assert node.installed_bytes() == before


async def test_update_with_and_without_restarts(node: Node,
                                                licence_server: LicenceServerLab) -> None:
    await node.configure()
    serial = licence_server.create("PBX,WEB_CLIENT_SMART=10")
    await activate(node, licence_server, serial)
    jobs = len(node.systemd.jobs)
    licence_server.vendor("serial", "modules", serial, "--modules", "PBX,WEB_CLIENT_SMART=20")
    found = await node.manager.check()
    assert found["update_available"] is True
    assert found["modules"] == [{"module": "WEB_CLIENT_SMART", "before": "enabled (limit 10)",
                                 "after": "enabled (limit 20)"}]
    review = await node.manager.update(apply=False, release=[])
    assert review["interruption"] is False and review["units"] == []
    done = await node.manager.update(apply=True, release=[])
    assert done["restart"] == "not needed: no unit starts or stops"
    assert len(node.systemd.jobs) == jobs  # no unit touched
    licence_server.vendor("serial", "modules", serial, "--modules",
                          "PBX,WEB_CLIENT_SMART=20,WEB_CLIENT")
    await node.manager.check()
    review = await node.manager.update(apply=False, release=[])
    assert review["interruption"] is True
    assert review["units"] == [{"name": "webclientproxy", "unit":
                                "tvox-webclientproxy.service", "action": "start"}]
    done = await node.manager.update(apply=True, release=[])
    assert done["restart"]["failed"] == 0
    assert "tvox-webclientproxy.service" in node.running()
    with pytest.raises(Conflict, match="no licence update is waiting"):
        await node.manager.update(apply=True, release=[])


async def test_reduction_needs_a_review(node: Node, licence_server: LicenceServerLab) -> None:
    serial = licence_server.create("PBX,WEB_CLIENT_SMART=10")
    await activate(node, licence_server, serial)
    users = [f"u{i}" for i in range(7)]
    await node.manager.assign("WEB_CLIENT_SMART", users, [])
    with pytest.raises(Conflict, match="allows 10; 7 are assigned, 4 more do not fit"):
        await node.manager.assign("WEB_CLIENT_SMART", ["a", "b", "c", "d"], [])
    licence_server.vendor("serial", "modules", serial, "--modules", "PBX,WEB_CLIENT_SMART=5")
    await node.manager.check()
    with pytest.raises(Conflict) as err:
        await node.manager.update(apply=True, release=[])
    assert err.value.message == "the update lowers licence limits below the assignments in use"
    assert [str(p) for p in err.value.problems] == [
        "WEB_CLIENT_SMART: the new licence allows 5, 7 are assigned (u0, u1, u2, u3, u4, u5, "
        "u6): release at least 2"]
    with pytest.raises(Conflict):
        await node.manager.update(apply=True, release=["u1"])
    assert node.manager.show()["version"] == 1  # nothing applied
    with pytest.raises(InvalidInput, match="cannot release what is not assigned"):
        await node.manager.update(apply=True, release=["nobody"])
    done = await node.manager.update(apply=True, release=["u1", "u6"])
    assert done["released"] == ["u1", "u6"] and node.manager.show()["version"] == 2
    assert node.manager.assignments()["assignments"] == [
        {"module": "WEB_CLIENT_SMART", "limit": 5, "holders": ["u0", "u2", "u3", "u4", "u5"]}]


async def test_removal_grace_and_move_to_another_node(tmp_path: Path, node: Node,
                                                      licence_server: LicenceServerLab) -> None:
    await node.configure()
    serial = licence_server.create("PBX")
    await activate(node, licence_server, serial)
    removed = await node.manager.remove()
    assert removed["licence"]["state"] == "GRACE"
    assert removed["notice_sent_to"] == "o***@acme.example"
    assert "removed from a node" in licence_server.mails()[-1]["subject"]
    await node.manager.tick()
    node.clock.now += 30 * DAY - 60
    await node.manager.tick()
    assert node.manager.show()["state"] == "GRACE" and "asterisk.service" in node.running()
    node.clock.now += 60
    await node.manager.tick()
    assert node.manager.show()["state"] == "UNLICENSED"
    assert node.running() == {"nginx.service"}  # restarted without the PBX units
    second = Node(tmp_path / "node2", licence_server, "5" * 32)
    assert (await activate(second, licence_server, serial))["licence"]["state"] == "ACTIVE"


async def test_pure_cloud_licence_needs_domain_and_public_ip(
        node: Node, licence_server: LicenceServerLab) -> None:
    serial = licence_server.create("PBX,PURE_CLOUD")
    await node.manager.activate(serial, EMAIL)
    with pytest.raises(InvalidInput) as err:
        await node.manager.verify(licence_server.code())
    assert [str(p) for p in err.value.problems] == [
        "network.domain: required before a licence with PURE_CLOUD is activated (the public "
        "DNS name)",
        "network.public_ip: required before a licence with PURE_CLOUD is activated (the static "
        "public address)"]
    assert node.installed_bytes() is None
    node.document["network"] |= {"domain": "pbx.acme.example", "public_ip": "198.51.100.7"}
    node.state = validate_document(node.document)
    await node.manager.activate(serial, EMAIL)
    await node.manager.verify(licence_server.code())
    assert (await node.manager.current()).has("PURE_CLOUD")


async def test_twelve_hour_check_with_injected_clock(node: Node,
                                                     licence_server: LicenceServerLab) -> None:
    serial = licence_server.create("PBX")
    await activate(node, licence_server, serial)
    licence_server.vendor("serial", "modules", serial, "--modules", "PBX,CHAT")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        node.clock.now += seconds
        if node.manager.show()["update_available"] or len(slept) > 40:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    start = node.clock.now
    with pytest.raises(asyncio.CancelledError):
        await node.manager.run(sleep=sleep)
    shown = node.manager.show()
    assert shown["update_available"] == {"version": 2, "modules": [
        {"module": "CHAT", "before": "absent", "after": "enabled"}]}
    elapsed = shown["last_check"] - start
    assert 11.5 * 3600 <= elapsed <= 12.5 * 3600  # 12 h ± the 30 min jitter
    assert all(s <= 3600 for s in slept)


async def test_malformed_responses_change_nothing(node: Node,
                                                  licence_server: LicenceServerLab) -> None:
    from aiohttp import web

    serial = licence_server.create("PBX")
    await activate(node, licence_server, serial)
    before = node.installed_bytes()
    answers = {
        "not json": (web.Response(text="<html>proxy error</html>", status=200),
                     "the licence server at http://127.0.0.1:{port} sent an answer that is "
                     "not JSON (HTTP 200)"),
        "no licence": (web.json_response({"version": 9}),
                       "the licence server's answer has no valid 'licence'"),
        "bad signature": (web.json_response({"version": 9, "licence": before.decode().replace(
            '"PBX"', '"PBY"') if before else ""}),
            "the licence server sent a licence that is refused: the licence signature does not "
            "verify: the licence was altered or was not issued by this vendor"),
        "error without message": (web.json_response({"oops": 1}, status=500),
                                  "the licence server at http://127.0.0.1:{port} answered HTTP "
                                  "500 without an error message"),
    }
    for name, (response, message) in answers.items():
        app = web.Application()

        async def handler(request: web.Request, response: web.Response = response
                          ) -> web.Response:
            return response
        app.router.add_post("/v1/check", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        node.state = validate_document(node.document | {"license": {
            "server_url": f"http://127.0.0.1:{port}"}})
        try:
            with pytest.raises(BadResponse) as err:
                await node.manager.check()
            assert err.value.message == message.format(port=port), name
        finally:
            await runner.cleanup()
        assert node.installed_bytes() == before, name
        assert node.manager.show()["state"] == "ACTIVE"
