"""What the image build steps hand to each other (image.artifacts): a result file holds the
paths relative to itself and the sha256 of each file, so an out/ directory moved whole still
reads; a missing, foreign or broken result and a file changed since it was recorded are
each one line with an exit status; and the disk steps read their inputs from the results
(`make raw` without `make iso` first, `image.ami` on the wrong disk)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from image import ami, packer
from image.artifacts import (
    Artifact,
    DiskBuild,
    IsoBuild,
    RpmBuild,
    read_result,
    write_result,
)
from image.buildutil import EXIT_MISSING_INPUT, EXIT_USAGE, EXIT_WRONG_INPUT, BuildError, sha256


def made(path: Path, data: bytes) -> Artifact:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Artifact.of(path)


@pytest.fixture
def rpm_build(tmp_path: Path) -> RpmBuild:
    out = tmp_path / "out"
    rpm = made(out / "rpm" / "voxnode-0.1.0-1.el8.x86_64.rpm", b"an rpm")
    made(out / "repo" / "Packages" / rpm.path.name, b"an rpm")
    repomd = made(out / "repo" / "repodata" / "repomd.xml", b"<repomd/>")
    return RpmBuild(rpm=rpm, repo=out / "repo", repomd=repomd, version="0.1.0",
                    build_id="0.1.0-20250615")


def test_a_result_reads_back_the_same_and_holds_relative_paths(
        rpm_build: RpmBuild, tmp_path: Path) -> None:
    path = write_result(rpm_build, tmp_path / "out" / "rpm.json")
    data = json.loads(path.read_text())
    assert data["step"] == "rpm"
    assert data["rpm"] == {"path": "rpm/voxnode-0.1.0-1.el8.x86_64.rpm",
                           "sha256": sha256(rpm_build.rpm.path), "size": 6}
    assert data["repo"] == "repo"
    assert read_result(path, RpmBuild) == rpm_build
    assert not list(path.parent.glob("*.tmp"))


def test_an_out_directory_moved_whole_still_reads(rpm_build: RpmBuild, tmp_path: Path) -> None:
    write_result(rpm_build, tmp_path / "out" / "rpm.json")
    shutil.move(tmp_path / "out", tmp_path / "elsewhere")
    moved = read_result(tmp_path / "elsewhere" / "rpm.json", RpmBuild).check()
    assert moved.rpm.path == tmp_path / "elsewhere" / "rpm" / rpm_build.rpm.path.name
    assert moved.repo == tmp_path / "elsewhere" / "repo"


def test_a_missing_result_names_the_step_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as rpm:
        read_result(tmp_path / "rpm.json", RpmBuild)
    assert rpm.value.code == EXIT_MISSING_INPUT
    assert rpm.value.message == f"{tmp_path / 'rpm.json'} not found: build it first with `make rpm`"
    with pytest.raises(BuildError) as disk:
        read_result(tmp_path / "ami.json", DiskBuild, made_by="make ami")
    assert disk.value.message.endswith("not found: build it first with `make ami`")


@pytest.mark.parametrize(("text", "why"), [
    ("not json", "Expecting value"),
    ('{"step": "iso"}', "not a rpm result"),
    ('["rpm"]', "not a rpm result"),
    ('{"step": "rpm", "rpm": {"path": "x.rpm"}}', "'sha256'"),
    ('{"step": "rpm", "rpm": {"path": 7, "sha256": "0", "size": 1}}', "not a path: 7"),
])
def test_a_file_that_is_not_the_result_is_one_line(text: str, why: str, tmp_path: Path) -> None:
    path = tmp_path / "rpm.json"
    path.write_text(text)
    with pytest.raises(BuildError) as err:
        read_result(path, RpmBuild)
    assert err.value.code == EXIT_WRONG_INPUT
    assert err.value.message.startswith(f"{path} is not the result of `make rpm` (")
    assert why in err.value.message and err.value.message.endswith("): build it again")


# (what is edited in a good rpm.json, how, what the error says)
HOSTILE = [
    ("version", '0.1.0"; curl x | sh; "', "version"),
    ("version", "1;touch /tmp/pwn #", "version"),
    ("build_id", "$(reboot)", "build id"),
    ("repo", "/etc", "a recorded path is relative"),
    ("repo", "../../etc", "a recorded path is relative"),
    ("rpm.path", "/etc/passwd", "a recorded path is relative"),
    ("rpm.sha256", "0; rm -rf /", "sha256"),
    ("rpm.size", True, "byte count"),
]


@pytest.mark.parametrize(("field", "value", "why"), HOSTILE,
                         ids=[f"{f}={v!r}" for f, v, _ in HOSTILE])
def test_a_hostile_result_file_is_refused(rpm_build: RpmBuild, tmp_path: Path, field: str,
                                          value: object, why: str) -> None:
    """A result file is the next step's input: its names reach the kickstart's %post (root
    on the installed node), file names and Packer's shell. Anything but plain names and
    paths inside out/ is refused, as one line."""
    path = write_result(rpm_build, tmp_path / "out" / "rpm.json")
    data = json.loads(path.read_text())
    where, _, key = field.rpartition(".")
    (data[where] if where else data)[key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(BuildError) as err:
        read_result(path, RpmBuild)
    assert err.value.code == EXIT_WRONG_INPUT
    assert why in err.value.message, err.value.message


def test_a_file_changed_or_gone_since_it_was_recorded(rpm_build: RpmBuild) -> None:
    assert rpm_build.check() == rpm_build
    copy = rpm_build.repo / "Packages" / rpm_build.rpm.path.name
    copy.write_bytes(b"an RPM")  # same size, other bytes
    with pytest.raises(BuildError) as changed:
        rpm_build.check()
    assert changed.value.code == EXIT_WRONG_INPUT
    assert changed.value.message == (
        f"{copy} changed after `make rpm` made it (sha256 {rpm_build.rpm.sha256[:16]}… "
        "recorded): build it again")
    rpm_build.rpm.path.unlink()
    with pytest.raises(BuildError) as gone:
        rpm_build.check()
    assert gone.value.code == EXIT_MISSING_INPUT
    assert gone.value.message == f"{rpm_build.rpm.path} is missing: build it again with `make rpm`"


def test_make_raw_reads_the_iso_from_the_iso_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BuildError) as none:
        packer.main(["raw", "--out", str(out)])
    assert none.value.code == EXIT_MISSING_INPUT
    assert none.value.message == (f"{out / 'iso.json'} not found: build it first with "
                                  "`make iso BASE_ISO=…`")
    iso = made(out / "voxnode-0.1.0-x86_64.iso", b"an iso")
    result = IsoBuild(iso=iso, manifest=out / "voxnode-0.1.0-x86_64.manifest.json",
                      volume_id="AlmaLinux-8-10-x86_64 dvd", version="0.1.0", build_id="b")
    assert packer.iso_vars(result, out) == [
        "-var", f"iso_path={iso.path}", "-var", f"iso_checksum=sha256:{iso.sha256}",
        "-var", "volume_id=AlmaLinux-8-10-x86_64\\x20dvd", "-var", f"output_dir={out / 'packer'}",
        "-var", "image_name=voxnode-0.1.0-x86_64"]
    assert packer.disk_files(out, "raw", "voxnode-0.1.0-x86_64") == [
        out / "packer/raw/voxnode-0.1.0-x86_64.raw", out / "packer/raw/voxnode-0.1.0-x86_64.qcow2"]
    iso.path.write_bytes(b"another iso")
    with pytest.raises(BuildError) as changed:
        packer.iso_vars(result, out)
    assert changed.value.code == EXIT_WRONG_INPUT
    assert changed.value.message == (f"{iso.path} changed after `make iso BASE_ISO=…` made it "
                                     "(size 6 recorded): build it again")
    iso.path.unlink()
    with pytest.raises(BuildError) as gone:
        packer.iso_vars(result, out)
    assert gone.value.code == EXIT_MISSING_INPUT


def test_make_ami_needs_a_bucket_before_it_builds(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXNODE_S3_BUCKET", raising=False)
    with pytest.raises(BuildError) as err:
        packer.main(["ami", "--out", str(tmp_path)])  # no iso.json either: the bucket first
    assert err.value.code == EXIT_USAGE
    assert err.value.message.startswith("no S3 bucket: set AWS_S3_BUCKET=")


def test_the_ami_registers_only_the_aws_disk(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ami, "need_tools", lambda *tools: None)  # no AWS CLI needed to refuse
    raw = made(tmp_path / "packer" / "raw" / "voxnode-0.1.0-x86_64.raw", b"a disk")
    disk = DiskBuild(target="raw", disks=(raw,), iso_sha256="0" * 64, version="0.1.0")
    with pytest.raises(BuildError) as err:
        ami.register(disk, name="voxnode-0.1.0-x86_64", bucket="b")
    assert err.value.code == EXIT_WRONG_INPUT
    assert err.value.message == (f"{raw.path} is the raw disk, not the AWS one (ks-aws.cfg): "
                                 "build it with `make ami`")
