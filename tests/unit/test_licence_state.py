"""The licence state machine with an injected clock: grace, expiry, clock moved back,
the 12 h check schedule, reductions, fingerprint rules and the licence settings (the
document's ``license`` section)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import InvalidInput
from agent.licence.changes import reduction_problems
from agent.licence.document import Licence, Module
from agent.licence.fingerprint import FingerprintError, node_fingerprint
from agent.licence.state import (
    CHECK_INTERVAL_S,
    LicenceFiles,
    LicenceState,
    Pending,
    Record,
    evaluate,
    next_check_at,
)
from agent.state.document import validate_document

DAY = 86400.0
T0 = 1_800_000_000.0


def licence(valid_until: float | None = None, limit: int = 10) -> Licence:
    return Licence("VX-1", "ACME", "o@a.example", (Module("PBX"), Module("WCS", True, limit)),
                   int(T0), int(valid_until) if valid_until else None, 1, "sha256:x")


def test_off_then_code_sent_then_active() -> None:
    record = Record()
    assert evaluate(record, None, "", T0).state is LicenceState.OFF
    record.pending = Pending("VX-1", "o@a.example", T0)
    assert evaluate(record, None, "", T0).state is LicenceState.CODE_SENT
    record.pending = None
    status = evaluate(record, licence(), "", T0)
    assert status.state is LicenceState.ACTIVE and status.modules == {"PBX", "WCS"}


def test_grace_is_thirty_calendar_days_then_unlicensed() -> None:
    record = Record(removed_at=T0, ever_licensed=True)
    status = evaluate(record, licence(), "", T0 + 30 * DAY - 1)
    assert status.state is LicenceState.GRACE and status.active
    assert status.grace_until == T0 + 30 * DAY
    after = evaluate(record, licence(), "", T0 + 30 * DAY)
    assert after.state is LicenceState.UNLICENSED and after.modules == frozenset()
    assert "30-day grace period is over" in after.reason


def test_expiry() -> None:
    lic = licence(valid_until=T0 + DAY)
    assert evaluate(Record(), lic, "", T0 + DAY - 1).state is LicenceState.ACTIVE
    expired = evaluate(Record(), lic, "", T0 + DAY)
    assert expired.state is LicenceState.EXPIRED and not expired.active
    assert expired.reason == "no licence is active on this node (licence VX-1 expired)"


def test_clock_moved_back_is_reported_and_cannot_revive_a_licence() -> None:
    lic = licence(valid_until=T0 + DAY)
    record = Record(max_seen=T0 + 2 * DAY)
    status = evaluate(record, lic, "", T0)  # the clock went back two days
    assert status.state is LicenceState.EXPIRED
    assert status.clock_warning.startswith("the system clock is 2.0 days behind")
    assert evaluate(Record(max_seen=T0 + DAY - 60), licence(), "", T0).clock_warning == ""


def test_twelve_hour_schedule() -> None:
    assert next_check_at(Record(), T0, 0) == T0
    assert next_check_at(Record(last_check=T0), T0, 600) == T0 + CHECK_INTERVAL_S + 600


def test_alarm_after_three_failures() -> None:
    record = Record(failures=2, last_error="boom")
    assert evaluate(record, licence(), "", T0).alarm == ""
    record.failures = 3
    assert evaluate(record, licence(), "", T0).alarm == (
        "the licence server has not answered 3 checks in a row (last error: boom); the node "
        "keeps its licence meanwhile")


def test_reductions() -> None:
    held = {"WCS": ["a", "b", "c"], "PBX": ["x"]}
    assert reduction_problems(licence(limit=3), held, []) == []
    problems = reduction_problems(licence(limit=1), held, ["a"])
    assert [str(p) for p in problems] == [
        "WCS: the new licence allows 1, 2 are assigned (b, c): release at least 1"]
    assert reduction_problems(licence(limit=1), held, ["a", "b"]) == []


def test_record_survives_a_round_trip(tmp_path: Path) -> None:
    files = LicenceFiles(tmp_path)
    record = Record(pending=Pending("S", "e@x.example", T0), assignments={"WCS": ["a"]})
    files.write_record(record)
    assert files.read_record() == record
    (tmp_path / "licence/state.json").write_text("{broken")
    assert files.read_record() == Record()


def test_fingerprint_rules(tmp_path: Path) -> None:
    root, sys_root, run = tmp_path / "root", tmp_path / "sys", tmp_path / "run"
    (root / "etc").mkdir(parents=True)
    with pytest.raises(FingerprintError, match="machine-id is missing or empty"):
        node_fingerprint(root)
    (root / "etc/machine-id").write_text("abc\n")
    assert node_fingerprint(root).source == "machine-id"
    (sys_root / "class/dmi/id").mkdir(parents=True)
    (sys_root / "class/dmi/id/product_uuid").write_text("UUID-1\n")
    nic = sys_root / "class/net/eth0"
    (nic / "device").mkdir(parents=True)
    (nic / "address").write_text("52:54:00:aa:bb:cc\n")
    run.mkdir()

    def never() -> str:
        raise AssertionError("IMDS must not be contacted")

    hw = node_fingerprint(Path("/"), sys_root=sys_root, run_root=run, instance_identity=never)
    assert hw.source == "dmi"
    assert hw == node_fingerprint(Path("/"), sys_root=sys_root, run_root=run,
                                  instance_identity=never)
    (nic / "address").write_text("52:54:00:aa:bb:cd\n")
    assert node_fingerprint(Path("/"), sys_root=sys_root, run_root=run,
                            instance_identity=never) != hw
    (sys_root / "class/dmi/id/sys_vendor").write_text("Amazon EC2\n")
    aws = node_fingerprint(Path("/"), sys_root=sys_root, run_root=run,
                           instance_identity=lambda: "i-0123")
    assert aws.source == "aws"


@pytest.mark.parametrize(("section", "problem"), [
    ({"server_url": "ftp://x"}, "license.server_url: 'ftp://x' is not an http:// or https:// "
     "URL (e.g. https://license.example.com)"),
    ({"public_key_file": "vendor.pub"}, "license.public_key_file: 'vendor.pub' is not an "
     "absolute path (e.g. /etc/voxnode/vendor.pub)"),
    ({"server": "x"}, "license.server: unknown key (allowed: server_url, public_key_file)"),
])
def test_licence_settings_validation(section: dict[str, str], problem: str) -> None:
    doc = {"schema_version": 1, "network": {"hostname": "pbx1", "interfaces": {
        "eth0": {"dhcp": True}}}, "license": section}
    with pytest.raises(InvalidInput) as err:
        validate_document(doc)
    assert [str(p) for p in err.value.problems] == [problem]


def test_licence_settings_defaults() -> None:
    doc = {"schema_version": 1, "network": {"hostname": "pbx1", "interfaces": {
        "eth0": {"dhcp": True}}}}
    state = validate_document(doc)
    assert "license" not in state.to_document()
    assert state.licence_settings.public_key_file == "/etc/voxnode/vendor.pub"
