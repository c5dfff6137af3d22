"""The working-mode subsystem: licence check, and apply on a real file tree (its plan:
test_mode_plan)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.errors import Problem, SubsystemError
from agent.mode.subsystem import ModeSubsystem
from agent.paths import (
    COTURN_CONF,
    MCS_CERT_DIR,
    MCS_CLIENT_CONF,
    PJSIP_VOXNODE_CONF,
    TURN_SECRET,
    WORKING_MODE_JSON,
)
from agent.ports.files import FileTree
from agent.ports.licence import NoLicence, StaticLicence
from agent.state.document import validate_document
from agent.state.model import DesiredState
from agent.subsystems.base import Change

LICENSED = StaticLicence(frozenset({"PURE_CLOUD"}))


def state(mode: str = "standard", **network: Any) -> DesiredState:
    net: dict[str, Any] = {
        "hostname": "pbx1",
        "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}},
        "gateway": "10.0.0.1",
        "domain": "pbx.example.com",
        "public_ip": "203.0.113.10",
    }
    net |= network
    return validate_document({"schema_version": 1, "network": net, "mode": mode})


STANDARD = state()
PURE_CLOUD = state("pure-cloud")


def subsystem(tmp_path: Path) -> tuple[ModeSubsystem, FileTree]:
    files = FileTree(tmp_path)
    return ModeSubsystem(files, LICENSED), files


def plant(files: FileTree, node_path: str, text: str, mode: int = 0o644) -> None:
    """A file the test expects to find (written directly: the durable writer refuses to
    run on the test's event loop)."""
    path = files.path(node_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def with_mcs_client(files: FileTree) -> None:
    plant(files, MCS_CLIENT_CONF, "client\nremote mcs.example.net 1194\n", 0o600)
    plant(files, f"{MCS_CERT_DIR}/client.crt", "-----BEGIN CERTIFICATE-----\n", 0o600)


# --- check ----------------------------------------------------------------------------------


async def test_pure_cloud_without_licence_is_refused(tmp_path: Path) -> None:
    sub = ModeSubsystem(FileTree(tmp_path), NoLicence())
    problems = await sub.check(PURE_CLOUD)
    assert [str(p) for p in problems] == [
        "mode: pure-cloud needs the PURE_CLOUD licence module; no licence is active on this "
        "node (licensing is not set up yet)"
    ]


async def test_active_licence_without_the_module_is_refused(tmp_path: Path) -> None:
    sub = ModeSubsystem(FileTree(tmp_path), StaticLicence(frozenset({"SMART_WORKING", "CTI"})))
    assert await sub.check(PURE_CLOUD) == [
        Problem(
            "mode",
            "pure-cloud needs the PURE_CLOUD licence module; the active licence does not "
            "include it (licensed modules: CTI, SMART_WORKING)",
        )
    ]


async def test_pure_cloud_with_the_module_is_accepted(tmp_path: Path) -> None:
    sub, _ = subsystem(tmp_path)
    assert await sub.check(PURE_CLOUD) == []


async def test_standard_needs_no_licence(tmp_path: Path) -> None:
    assert await ModeSubsystem(FileTree(tmp_path), NoLicence()).check(STANDARD) == []


# --- apply ----------------------------------------------------------------------------------


def secret_of(files: FileTree) -> str:
    data = files.read(TURN_SECRET)
    assert data is not None
    return data.decode().strip()


def assert_secret_hidden(changes: list[Change], secret: str) -> None:
    for change in changes:
        assert secret not in str(change)
        assert secret not in json.dumps(change.to_dict())


async def test_first_start_standard_writes_files_and_keeps_mcs(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    with_mcs_client(files)
    changes = await sub.apply(None, STANDARD)
    assert [(c.action, c.target) for c in changes] == [
        ("write", PJSIP_VOXNODE_CONF),
        ("write", WORKING_MODE_JSON),
    ]
    assert files.exists(MCS_CLIENT_CONF) and files.exists(MCS_CERT_DIR)
    assert not files.exists(COTURN_CONF) and not files.exists(TURN_SECRET)
    assert await sub.apply(STANDARD, STANDARD) == []


async def test_standard_to_pure_cloud_deletes_mcs_last(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    with_mcs_client(files)
    await sub.apply(None, STANDARD)
    changes = await sub.apply(STANDARD, PURE_CLOUD)
    assert [(c.action, c.target) for c in changes] == [
        ("create", TURN_SECRET),
        ("write", COTURN_CONF),
        ("write", PJSIP_VOXNODE_CONF),
        ("write", WORKING_MODE_JSON),
        ("delete", MCS_CLIENT_CONF),
        ("delete", MCS_CERT_DIR),
    ]
    assert not files.exists(MCS_CLIENT_CONF) and not files.exists(MCS_CERT_DIR)
    secret = secret_of(files)
    assert len(secret) == 64 and int(secret, 16) >= 0
    assert stat.S_IMODE(files.path(TURN_SECRET).stat().st_mode) == 0o600
    assert stat.S_IMODE(files.path(COTURN_CONF).stat().st_mode) == 0o640
    coturn = files.read(COTURN_CONF)
    assert coturn is not None and f"static-auth-secret={secret}\n" in coturn.decode()
    assert_secret_hidden(changes, secret)
    pjsip = files.read(PJSIP_VOXNODE_CONF)
    assert pjsip is not None and b"protocol=tls" in pjsip
    # converged: the same transition again, and the steady state, change nothing
    assert await sub.apply(STANDARD, PURE_CLOUD) == []
    assert await sub.apply(PURE_CLOUD, PURE_CLOUD) == []
    assert secret_of(files) == secret


async def test_mcs_survives_when_an_earlier_step_fails(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    with_mcs_client(files)
    # a directory where the JSON file should be: the write fails before the MCS deletion
    files.path(WORKING_MODE_JSON).mkdir(parents=True)
    with pytest.raises(
        SubsystemError, match=r"^cannot write /etc/voxnode/working-mode\.json: Is a directory$"
    ):
        await sub.apply(STANDARD, PURE_CLOUD)
    assert files.exists(MCS_CLIENT_CONF) and files.exists(f"{MCS_CERT_DIR}/client.crt")


async def test_first_start_in_pure_cloud_keeps_mcs(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    with_mcs_client(files)
    await sub.apply(None, PURE_CLOUD)
    assert files.exists(MCS_CLIENT_CONF)


async def test_pure_cloud_to_standard_removes_coturn_and_keeps_secret(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    await sub.apply(None, PURE_CLOUD)
    secret = secret_of(files)
    changes = await sub.apply(PURE_CLOUD, STANDARD)
    assert [(c.action, c.target) for c in changes] == [
        ("remove", COTURN_CONF),
        ("write", PJSIP_VOXNODE_CONF),
        ("write", WORKING_MODE_JSON),
    ]
    assert not files.exists(COTURN_CONF)
    mode_json = files.read(WORKING_MODE_JSON)
    assert mode_json is not None and json.loads(mode_json)["mode"] == "standard"
    assert await sub.apply(PURE_CLOUD, STANDARD) == []
    # back to Pure Cloud: the secret is reused, not regenerated
    changes = await sub.apply(STANDARD, PURE_CLOUD)
    assert ("create", TURN_SECRET) not in [(c.action, c.target) for c in changes]
    assert secret_of(files) == secret


async def test_existing_secret_is_kept_and_its_mode_tightened(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    plant(files, TURN_SECRET, "operator-chosen-secret-123\n", 0o644)
    changes = await sub.apply(None, PURE_CLOUD)
    assert Change("set", TURN_SECRET, "mode 0600") in changes
    assert stat.S_IMODE(files.path(TURN_SECRET).stat().st_mode) == 0o600
    assert secret_of(files) == "operator-chosen-secret-123"
    assert_secret_hidden(changes, "operator-chosen-secret-123")


async def test_malformed_secret_is_an_error_without_the_secret(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    plant(files, TURN_SECRET, "short secret with spaces\n", 0o600)
    with pytest.raises(SubsystemError) as info:
        await sub.apply(None, PURE_CLOUD)
    assert "spaces" not in json.dumps(info.value.to_dict())
    assert not files.exists(COTURN_CONF)


async def test_public_ip_change_rewrites_only_what_depends_on_it(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    await sub.apply(None, PURE_CLOUD)
    moved = state("pure-cloud", public_ip="203.0.113.20")
    changes = await sub.apply(PURE_CLOUD, moved)
    assert [(c.action, c.target) for c in changes] == [
        ("write", COTURN_CONF),
        ("write", PJSIP_VOXNODE_CONF),
    ]
    assert_secret_hidden(changes, secret_of(files))
    assert await sub.apply(moved, moved) == []


async def test_apply_repairs_a_drifted_file(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    await sub.apply(None, STANDARD)
    files.path(PJSIP_VOXNODE_CONF).write_text("; edited by hand\n")
    plant(files, COTURN_CONF, "stale\n")
    changes = await sub.apply(STANDARD, STANDARD)
    assert [(c.action, c.target) for c in changes] == [
        ("remove", COTURN_CONF),
        ("write", PJSIP_VOXNODE_CONF),
    ]


# --- observe: the MCS client configuration that a switch would delete ----------------------


async def test_a_switch_without_an_mcs_client_asks_no_consent(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    files.path(MCS_CERT_DIR).mkdir(parents=True)  # an empty directory holds nothing
    observed = await sub.observe(PURE_CLOUD)
    assert observed == ()
    result = sub.plan(STANDARD, PURE_CLOUD, observed)
    assert result.acknowledge == ()
    assert "mcs-client-delete" not in [s.code for s in result.steps]


async def test_a_switch_with_an_mcs_client_names_what_it_deletes(tmp_path: Path) -> None:
    sub, files = subsystem(tmp_path)
    with_mcs_client(files)
    observed = await sub.observe(PURE_CLOUD)
    assert observed == (MCS_CLIENT_CONF, MCS_CERT_DIR)
    result = sub.plan(STANDARD, PURE_CLOUD, observed)
    [ack] = result.acknowledge
    assert (ack.code, ack.params) == ("mcs-client-lost",
                                      {"paths": f"{MCS_CLIENT_CONF},{MCS_CERT_DIR}"})
    files.path(MCS_CLIENT_CONF).unlink()  # only the certificates left: those are named
    observed = await sub.observe(PURE_CLOUD)
    assert observed == (MCS_CERT_DIR,)
    [ack] = sub.plan(STANDARD, PURE_CLOUD, observed).acknowledge
    assert ack.params == {"paths": MCS_CERT_DIR}

