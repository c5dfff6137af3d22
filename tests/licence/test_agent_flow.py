"""Licensing end to end: a real ``voxnode-agent`` and a real licence server, driven only
through the ``voxnode`` CLI.

Each test gets its own network namespace (``tests/netns``' ``Agent``) holding the agent
(``--root`` a temporary tree with ``etc/machine-id`` and the vendor public key), the
``voxnode-license-server`` process on 127.0.0.1 and the aiosmtpd mail sink the server
sends its codes to. The agent learns the server and the key from the document
(``license.server_url``, ``license.public_key_file``) applied with ``voxnode config apply``.
Nothing leaves the namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.licence.conftest import LicenceServerLab
from tests.netns.conftest import Agent, _namespace

pytestmark = pytest.mark.root

EMAIL = "orders@acme.example"
KEY_FILE = "/etc/voxnode/vendor-test.pub"
NO_LICENCE = ("no licence is active on this node (state OFF: activate one with `voxnode "
              "license activate --serial S --email E`)")


@dataclass
class Node:
    agent: Agent
    server: LicenceServerLab
    document: dict[str, Any]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.agent.cli(*args)

    def show(self) -> dict[str, Any]:
        data: dict[str, Any] = self.agent.cli_json("license", "show")
        return data

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.agent.cli_json("status")["licence"]
        return data

    @property
    def licence_file(self) -> Path:
        return self.agent.state_dir / "licence" / "licence.json"

    def installed(self) -> bytes | None:
        try:
            return self.licence_file.read_bytes()
        except FileNotFoundError:
            return None

    def apply(self, **network: Any) -> subprocess.CompletedProcess[str]:
        self.document["network"] |= network
        path = self.agent.write("node.yaml", yaml.safe_dump(self.document))
        return self.cli("config", "apply", str(path))

    def activate(self, serial: str) -> None:
        sent = self.cli("license", "activate", "--serial", serial, "--email", EMAIL)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        verified = self.cli("license", "verify", "--code", self.server.code())
        assert verified.returncode == 0, verified.stdout + verified.stderr


def flat(text: str) -> str:
    """Human output with its table wrapping undone (words joined by single spaces)."""
    return " ".join(text.split())


def fails(done: subprocess.CompletedProcess[str], code: int, *lines: str) -> None:
    """The command exited with ``code`` and its stderr starts with exactly ``lines``."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.splitlines()[:len(lines)] == list(lines), done.stderr


@pytest.fixture
def node() -> Iterator[Node]:
    with _namespace() as ns:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("link", "set", "peer0", "up")
        base = Path(tempfile.mkdtemp(prefix="vxl-", dir="/tmp"))  # short: the socket path
        server = LicenceServerLab(base / "server", prefix=("ip", "netns", "exec", ns.name))
        agent = Agent(ns, base)
        (agent.root / "etc/voxnode").mkdir(parents=True)
        (agent.root / "etc/machine-id").write_text("6" * 32 + "\n")
        shutil.copy(server.public_key, agent.root / KEY_FILE.lstrip("/"))
        document = {
            "schema_version": 1,
            "network": {"hostname": "pbx1", "domain": "pbx.acme.example",
                        "public_ip": "198.51.100.7",
                        "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}}},
            "license": {"server_url": server.url, "public_key_file": KEY_FILE},
        }
        handle = Node(agent, server, document)
        try:
            server.start()
            agent.start()
            applied = handle.apply()
            assert applied.returncode == 0, applied.stdout + applied.stderr
            yield handle
        finally:
            try:
                agent.close()
            finally:
                server.stop()
                shutil.rmtree(base, ignore_errors=True)


def test_activate_verify_check_remove(node: Node) -> None:
    shown = node.show()
    assert shown["state"] == "OFF" and shown["reason"] == NO_LICENCE
    assert shown["server_url"] == node.server.url and shown["public_key_file"] == KEY_FILE
    assert node.status() | {"reason": NO_LICENCE} == {
        "state": "OFF", "active": False, "reason": NO_LICENCE, "serial": None,
        "valid_until": None, "grace_until": None, "last_check": None,
        "last_successful_check": None, "alarm": None, "clock_warning": None}
    human = node.cli("status")
    assert f"licence OFF — {NO_LICENCE} pair " in flat(human.stdout), human.stdout

    serial = node.server.create("PBX,WEB_CLIENT_SMART=10", EMAIL, "--valid-days", "365")
    sent = node.cli("license", "activate", "--serial", serial, "--email", EMAIL)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == (f"A verification code for {serial} was emailed to o***@acme.example "
                           "(valid 15 min): run `voxnode license verify --code C`.\n")
    mail = node.server.mails()[-1]
    assert mail["to"] == [EMAIL] and mail["subject"] == f"Verification code for licence {serial}"
    assert node.show()["state"] == "CODE_SENT" and node.status()["serial"] == serial

    good = node.server.code()
    bad = "000000" if good != "000000" else "111111"
    fails(node.cli("license", "verify", "--code", bad), 3,
          "error: the licence server refused: the verification code is wrong (4 tries left)",
          "Nothing was changed on this node.")
    assert node.installed() is None and node.show()["state"] == "CODE_SENT"

    verified = node.cli("--json", "license", "verify", "--code", good)
    assert verified.returncode == 0, verified.stderr
    result = json.loads(verified.stdout)
    assert result["modules"] == [
        {"module": "PBX", "before": "absent", "after": "enabled"},
        {"module": "WEB_CLIENT_SMART", "before": "absent", "after": "enabled (limit 10)"}]
    assert result["restart"] == "units are not managed by this agent"  # --root: no systemd

    shown = node.show()
    assert shown["state"] == "ACTIVE" and shown["active"] is True
    assert shown["reason"] == f"licence {serial} is active"
    assert (shown["serial"], shown["company"], shown["email"], shown["version"]) == (
        serial, "ACME S.p.A.", EMAIL, 1)
    assert shown["modules"] == [{"name": "PBX", "enabled": True, "limit": None},
                                {"name": "WEB_CLIENT_SMART", "enabled": True, "limit": 10}]
    assert shown["valid_until"] == pytest.approx(shown["issued_at"] + 365 * 86400, abs=120)
    assert shown["last_check"] == shown["last_successful_check"] is not None
    assert shown["fingerprint"]["source"] == "machine-id"
    status = node.status()
    assert (status["state"], status["serial"], status["valid_until"]) == (
        "ACTIVE", serial, shown["valid_until"])
    assert f"licence ACTIVE {serial}, valid until " in flat(node.cli("status").stdout)

    again = node.cli("license", "activate", "--serial", serial, "--email", EMAIL)
    fails(again, 6, f"error: licence {serial} is already active on this node",
          "Remove it first with `voxnode license remove`.")
    before = node.installed()

    checked = node.cli("license", "check")
    assert (checked.returncode, checked.stdout) == (
        0, "The licence is up to date (version 1).\n"), checked.stderr
    assert node.show()["failed_checks"] == 0
    node.server.vendor("serial", "modules", serial, "--modules", "PBX,WEB_CLIENT_SMART=20")
    checked = node.cli("license", "check")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == [
        "Licence version 2 is available (installed 1); changed modules:",
        "  module WEB_CLIENT_SMART: enabled (limit 10) → enabled (limit 20)",
        "Apply it with `voxnode license update`."]
    assert node.installed() == before  # a check only finds the update

    refused = node.cli("license", "remove")  # no terminal, no --yes
    assert (refused.returncode, refused.stderr) == (6, "Remove the licence? The node works "
                                                    "unlicensed for 30 days. Not confirmed (no "
                                                    "terminal): repeat with --yes.\n")
    assert node.show()["state"] == "ACTIVE"
    removed = node.cli("license", "remove", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines()[0] == (
        f"Licence state: GRACE — licence {serial} removed: the node works unlicensed until "
        "the grace period ends")
    assert removed.stdout.splitlines()[-1] == "Removal notice emailed to o***@acme.example."
    assert node.server.mails()[-1]["subject"] == f"Licence {serial} removed from a node"
    shown = node.show()
    assert shown["state"] == "GRACE" and shown["active"] is True
    assert shown["grace_until"] == pytest.approx(shown["removed_at"] + 30 * 86400)
    status = node.status()
    assert status["state"] == "GRACE" and status["grace_until"] == shown["grace_until"]
    assert f"licence GRACE {serial}, grace until " in flat(node.cli("status").stdout)
    fails(node.cli("license", "remove", "--yes"), 6,
          "error: there is no active licence to remove")
    fails(node.cli("license", "check"), 6, "error: there is no active licence to check",
          "Activate one with `voxnode license activate`.")


def _activated(node: Node) -> str:
    serial = node.server.create("PBX", EMAIL, "--valid-days", "365")
    sent = node.cli("license", "activate", "--serial", serial, "--email", EMAIL)
    assert sent.returncode == 0, sent.stderr
    verified = node.cli("license", "verify", "--code", node.server.code())
    assert verified.returncode == 0, verified.stderr
    assert node.show()["state"] == "ACTIVE"
    return serial


def test_a_serial_revoked_by_the_vendor_ends_the_licence_at_the_next_check(
        node: Node) -> None:
    serial = _activated(node)
    node.server.vendor("serial", "revoke", serial)
    checked = node.cli("license", "check")
    assert (checked.returncode, flat(checked.stdout)) == (
        0, f"The licence server ended this node's licence: UNLICENSED — no licence is active "
        f"on this node (licence {serial} was revoked by the vendor)"), checked.stderr
    shown = node.show()
    assert (shown["state"], shown["active"], shown["failed_checks"]) == (
        "UNLICENSED", False, 0)
    events = [e for e in node.agent.cli_json("status")["events"]
              if e["kind"] == "licence.revoked"]
    assert [e["message"] for e in events] == [
        f"licence {serial} was revoked by the vendor: the node is unlicensed"]
    # ended for good: no more checks
    fails(node.cli("license", "check"), 6, "error: there is no active licence to check",
          "Activate one with `voxnode license activate`.")


def test_a_serial_no_longer_active_on_this_node_starts_the_grace_period(node: Node) -> None:
    serial = _activated(node)
    # the vendor's database no longer has this node's activation (released by the vendor
    # for new hardware): the removal's 30 days start at the check
    node.server.vendor("serial", "release", serial)
    checked = node.cli("license", "check")
    assert checked.returncode == 0, checked.stderr
    assert flat(checked.stdout).startswith(
        "The licence server ended this node's licence: GRACE — "), checked.stdout
    shown = node.show()
    assert shown["state"] == "GRACE"
    assert shown["grace_until"] == pytest.approx(shown["removed_at"] + 30 * 86400)


def test_bad_input_changes_nothing(node: Node) -> None:
    fails(node.cli("license", "activate", "--serial", "VX-NOPE-NOPE-NOPE", "--email", EMAIL), 3,
          "error: the licence server refused: serial VX-NOPE-NOPE-NOPE is not known to the "
          "licence server")
    serial = node.server.create("PBX")
    fails(node.cli("license", "activate", "--serial", serial, "--email",
                   "someone@else.example"), 3,
          "error: the licence server refused: the email does not match the one given with the "
          "order of this serial")
    fails(node.cli("license", "activate", "--serial", serial, "--email", "orders"), 3,
          "error: the activation request is not valid",
          "  email: 'orders' is not an email address")
    fails(node.cli("license", "verify", "--code", "123456"), 6,
          "error: no activation is waiting for a code",
          "Run `voxnode license activate --serial S --email E` first.")
    fails(node.cli("license", "verify", "--code", "12ab"), 3,
          "error: the verification code is not valid", "  code: the digits of the emailed code")
    fails(node.cli("license", "activate", "--serial", "V" * 100, "--email", EMAIL), 3,
          "error: bad request", "  serial: at most 64 characters, got 100")
    fails(node.cli("license", "activate", "--serial", serial, "--email",
                   "o" * 300 + "@acme.example"), 3,
          "error: bad request", "  email: at most 254 characters, got 313")
    assert node.server.mails() == []
    assert node.show()["state"] == "OFF" and node.installed() is None
    # the JSON error keeps the server's reason and the exit status
    done = node.cli("--json", "license", "activate", "--serial", "VX-NOPE-NOPE-NOPE",
                    "--email", EMAIL)
    assert done.returncode == 3
    assert json.loads(done.stdout)["error"] == {
        "code": "licence_input_refused", "message": "the licence server refused: serial "
        "VX-NOPE-NOPE-NOPE is not known to the licence server", "problems": [],
        "remedy": "Nothing was changed on this node.",
        "details": {"reason": "unknown_serial"}}

    node.activate(serial)
    before = node.installed()
    other = node.server.create("PBX,CHAT")
    fails(node.cli("license", "activate", "--serial", other, "--email", EMAIL), 6,
          f"error: licence {serial} is already active on this node")
    fails(node.cli("license", "verify", "--code", "999999"), 6,
          "error: no activation is waiting for a code")
    assert node.installed() == before and node.show()["serial"] == serial


def test_server_down_keeps_the_licence_and_raises_the_alarm(node: Node) -> None:
    serial = node.server.create("PBX")
    node.activate(serial)
    before = node.installed()
    verified_at = node.show()["last_successful_check"]
    node.server.stop_server()
    unreachable = (f"error: cannot reach the licence server at {node.server.url}: Connect call "
                   f"failed ('127.0.0.1', {node.server.port})")
    for attempt in (1, 2, 3):
        fails(node.cli("license", "check"), 5, unreachable,
              "Check the node's route and DNS to the licence server and license.server_url; "
              "nothing was changed.")
        shown = node.show()
        assert (shown["state"], shown["failed_checks"]) == ("ACTIVE", attempt)
        assert shown["last_check"] > verified_at
        assert shown["last_successful_check"] == verified_at
        assert shown["last_error"] == unreachable.removeprefix("error: ")
        if attempt < 3:
            assert shown["alarm"] is None and node.status()["alarm"] is None
    alarm = ("the licence server has not answered 3 checks in a row (last error: "
             f"{unreachable.removeprefix('error: ')}); the node keeps its licence meanwhile")
    assert shown["alarm"] == alarm
    status = node.status()
    assert (status["state"], status["alarm"], status["last_check"]) == (
        "ACTIVE", alarm, shown["last_check"])
    assert f"licence alarm: {flat(alarm)}" in flat(node.cli("status").stdout)
    assert f"alarm: {flat(alarm)}" in flat(node.cli("license", "show").stdout)
    fails(node.cli("license", "remove", "--yes"), 5, unreachable)
    assert node.show()["state"] == "ACTIVE" and node.installed() == before

    node.server.start_server()
    checked = node.cli("license", "check")
    assert checked.returncode == 0, checked.stderr
    shown = node.show()
    assert (shown["failed_checks"], shown["alarm"], shown["last_error"]) == (0, None, None)
    assert node.status()["alarm"] is None and node.installed() == before


def test_tampered_licence_file_is_reported_and_refused(node: Node) -> None:
    serial = node.server.create("PBX")
    node.activate(serial)
    data = bytearray(node.licence_file.read_bytes())
    data[data.index(b'"PBX"') + 1] = ord("Q")  # one byte: PBX -> QBX
    node.licence_file.write_bytes(bytes(data))
    reason = ("no licence is active on this node (the installed licence is refused: the "
              "licence signature does not verify: the licence was altered or was not issued "
              "by this vendor)")
    shown = node.show()
    assert (shown["state"], shown["active"], shown["reason"]) == ("UNLICENSED", False, reason)
    assert shown["modules"] == [] and shown["serial"] is None
    status = node.status()
    assert (status["state"], status["active"], status["reason"]) == (
        "UNLICENSED", False, reason)
    human = flat(node.cli("status").stdout)
    assert "licence UNLICENSED last check " in human and f" — {reason} pair " in human
    events = [e for e in node.agent.cli_json("status")["events"]
              if e["kind"] == "licence.refused"]
    assert [e["message"] for e in events] == [
        f"{reason.removeprefix('no licence is active on this node (')[:-1]}; the file is "
        "kept, never trusted"]  # reported once, however often it is read
    fails(node.cli("license", "check"), 6, "error: there is no active licence to check")
    mode = node.cli("mode", "set", "pure-cloud", "--yes")
    assert mode.returncode == 3, mode.stderr
    assert f"  mode: pure-cloud needs the PURE_CLOUD licence module; {reason}" in \
        mode.stderr.splitlines()
    assert node.licence_file.read_bytes() == bytes(data)  # kept as evidence, never trusted

    node.activate(serial)  # the remedy: activate again (the server knows this node)
    assert node.show()["state"] == "ACTIVE" and node.installed() != bytes(data)


def test_pure_cloud_reads_the_licence_module(node: Node) -> None:
    def mode_set() -> subprocess.CompletedProcess[str]:
        return node.cli("mode", "set", "pure-cloud", "--yes")

    needs = "  mode: pure-cloud needs the PURE_CLOUD licence module; "
    done = mode_set()
    assert done.returncode == 3, done.stderr
    assert needs + NO_LICENCE in done.stderr.splitlines()
    first = node.server.create("PBX")
    node.activate(first)
    done = mode_set()
    assert done.returncode == 3, done.stderr
    assert (needs + "the active licence does not include it (licensed modules: PBX)"
            in done.stderr.splitlines())
    assert node.agent.cli_json("mode", "show")["mode"] == "standard"

    assert node.cli("license", "remove", "--yes").returncode == 0
    second = node.server.create("PBX,PURE_CLOUD")
    node.activate(second)
    assert node.agent.cli_json("mode", "show")["licence"] == {
        "active": True, "modules": ["PBX", "PURE_CLOUD"]}
    unset = node.cli("network", "set", "--unset", "domain", "--unset", "public_ip")
    assert unset.returncode == 0, unset.stderr
    done = mode_set()
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines()[1:3] == [
        "  network.domain: required in pure-cloud mode (the public DNS name that resolves to "
        "network.public_ip)",
        "  network.public_ip: required in pure-cloud mode (the static public address, NAT 1:1)"]
    assert not any("PURE_CLOUD" in line for line in done.stderr.splitlines())
    back = node.cli("network", "set", "domain=pbx.acme.example", "public_ip=198.51.100.7")
    assert back.returncode == 0, back.stderr
    done = mode_set()
    assert done.returncode == 0, done.stdout + done.stderr
    assert node.agent.cli_json("mode", "show")["mode"] == "pure-cloud"
