"""The installer ISO, remastered by `make iso` from the synthetic AlmaLinux-layout base:
the kickstart argument reaches the kernel as CD and USB stick under BIOS and UEFI
(QEMU, software emulation, no network); boot records kept; media checksum; byte-identical
rebuild; bad BASE_ISO input gives one clear line and a distinct exit code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from image.artifacts import Artifact, IsoBuild, RpmBuild, read_result
from image.buildutil import EXIT_MISSING_INPUT, EXIT_MISSING_TOOL, EXIT_WRONG_INPUT, sha256
from tests.image import qemuboot, synthiso
from tests.image.conftest import Build, run_py

KS_ARG_BIOS = f"inst.ks=hd:LABEL={synthiso.ESCAPED}:/ks.cfg"
BOOT_BUDGET_S = 60  # per boot; measured 10-15 s each, two at a time on 2 cores


def xorriso(*args: str) -> str:
    return subprocess.run(["xorriso", *args], capture_output=True, text=True,
                          check=True).stdout


def label_of(cmdline: str, option: str) -> str:
    m = re.search(rf"{re.escape(option)}=hd:LABEL=(\S+?)(?::/\S*)?(?:\s|$)", cmdline)
    return m.group(1) if m else ""


def test_kickstart_argument_reaches_the_kernel_cd_usb_bios_uefi(build: Build) -> None:
    boots = qemuboot.boot_all(build.iso, timeout_s=BOOT_BUDGET_S)
    report = {b.name: f"{b.seconds:.1f} s" for b in boots}
    print(f"boot times: {report}")
    for boot in boots:
        cmdline = boot.line(synthiso.MARKER)
        assert boot.returncode == 0, f"{boot.name}: QEMU {boot.returncode}\n{boot.console[-2000:]}"
        assert cmdline, f"{boot.name}: no command line printed\n{boot.console[-2000:]}"
        assert boot.line("VOXNODE-FIRMWARE:") == boot.firmware, boot.name
        # the installer entry (no media check) is the default now, and it got the kickstart
        assert "rd.live.check" not in cmdline, boot.name
        assert re.search(r"inst\.ks=hd:LABEL=\S+:/ks\.cfg", cmdline), f"{boot.name}: {cmdline}"
        # same label spelling as the entry's own inst.stage2 (grub re-escapes backslashes)
        assert label_of(cmdline, "inst.ks") == label_of(cmdline, "inst.stage2"), boot.name
        if boot.firmware == "bios":
            assert KS_ARG_BIOS in cmdline.split(), f"{boot.name}: {cmdline}"


def test_iso_contents_and_efiboot_grub(build: Build, tmp_path: Path) -> None:
    listing = xorriso("-indev", str(build.iso), "-find", "/", "-type", "f")
    for path in ("/ks.cfg", "/ks-disk.cfg", "/ks-aws.cfg", "/voxnode/repodata/repomd.xml",
                 f"/voxnode/Packages/{build.rpm.name}", "/isolinux/isolinux.cfg",
                 "/EFI/BOOT/grub.cfg", "/images/efiboot.img", "/.discinfo"):
        assert f"'{path}'" in listing, path
    xorriso("-osirrox", "on", "-indev", str(build.iso), "-extract", "/images/efiboot.img",
            str(tmp_path / "efiboot.img"), "-extract", "/ks.cfg", str(tmp_path / "ks.cfg"))
    inner = subprocess.run(["mtype", "-i", str(tmp_path / "efiboot.img"),
                            "::/EFI/BOOT/grub.cfg"], capture_output=True, text=True,
                           check=True).stdout
    assert inner.count("inst.ks=hd:LABEL=") == 2 and 'set default="0"' in inner
    assert f"VOLID='{synthiso.VOLID}'" in (tmp_path / "ks.cfg").read_text()


def _records(iso: Path) -> list[str]:
    out = xorriso("-indev", str(iso), "-report_el_torito", "as_mkisofs")
    # the MBR template is read from the image itself and the date is the build's own
    return [re.sub(r":'[^']*'$", ":'<image>'", ln) for ln in out.splitlines()
            if not ln.startswith("--modification-date")]


def test_boot_records_are_kept(build: Build) -> None:
    assert _records(build.iso) == _records(build.base_iso)
    assert "-isohybrid-gpt-basdat" in _records(build.iso)


def test_checksum_sha256_and_manifest(build: Build) -> None:
    check = subprocess.run(["checkisomd5", "--verbose", str(build.iso)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout
    digest = sha256(build.iso)
    assert Path(f"{build.iso}.sha256").read_text() == f"{digest}  {build.iso.name}\n"
    manifest = json.loads(Path(str(build.iso).removesuffix(".iso") + ".manifest.json")
                          .read_text())
    assert manifest["sha256"] == digest and manifest["volume_id"] == synthiso.VOLID
    assert manifest["inputs"]["base_iso"]["sha256"] == sha256(build.base_iso)
    assert manifest["inputs"]["rpms"][0]["sha256"] == sha256(build.rpm)
    assert "voxnode" in manifest["packages"]["kickstart"]
    assert manifest["packages"]["appliance_repository"][0].startswith("voxnode-0.1.0-1.el8")
    assert manifest["build_id"] and manifest["source_date_epoch"] == 1750000000


def test_same_inputs_same_bytes(build: Build, tmp_path: Path) -> None:
    again = run_py("-m", "image.iso", "--base-iso", str(build.base_iso), "--rpm",
                   str(build.out / "rpm.json"), "--out", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert sha256(tmp_path / build.iso.name) == sha256(build.iso)


def test_each_step_records_what_it_made_for_the_next(build: Build) -> None:
    """`make rpm` and `make iso` write their results (out/rpm.json, out/iso.json) with the
    paths relative to out/ and the sha256 of what they made; the next step reads those."""
    rpm = read_result(build.out / "rpm.json", RpmBuild)
    assert rpm.rpm == Artifact(build.rpm, sha256(build.rpm), build.rpm.stat().st_size)
    assert rpm.repo == build.out / "repo" and rpm.check() == rpm
    assert json.loads((build.out / "rpm.json").read_text())["rpm"]["path"] == (
        f"rpm/{build.rpm.name}")
    iso = read_result(build.out / "iso.json", IsoBuild)
    assert iso.iso == Artifact(build.iso, sha256(build.iso), build.iso.stat().st_size)
    assert iso.volume_id == synthiso.VOLID and iso.version == rpm.version
    assert iso.manifest == Path(str(build.iso).removesuffix(".iso") + ".manifest.json")


def test_iso_takes_the_rpm_the_rpm_step_recorded(build: Build, tmp_path: Path) -> None:
    """No result of `make rpm`: one line naming it; an RPM changed after it was recorded:
    one line, nothing built."""
    missing = run_py("-m", "image.iso", "--base-iso", str(build.base_iso), "--rpm",
                     str(tmp_path / "rpm.json"), "--out", str(tmp_path / "out"))
    assert missing.returncode == EXIT_MISSING_INPUT, missing.stdout + missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'rpm.json'} not found: build it first with `make rpm`"]
    out = tmp_path / "moved"  # a whole out/ moved elsewhere still reads (relative paths)
    shutil.copytree(build.out, out, ignore=shutil.ignore_patterns("*.iso", "iso.json", "cache"))
    with (out / "rpm" / build.rpm.name).open("ab") as rpm:
        rpm.write(b"\0")
    changed = run_py("-m", "image.iso", "--base-iso", str(build.base_iso), "--rpm",
                     str(out / "rpm.json"), "--out", str(out))
    assert changed.returncode == EXIT_WRONG_INPUT, changed.stdout + changed.stderr
    assert changed.stderr.strip().splitlines() == [
        f"error: {out / 'rpm' / build.rpm.name} changed after `make rpm` made it (sha256 "
        f"{sha256(build.rpm)[:16]}… recorded): build it again"]
    assert not (out / "iso.json").exists() and not list(out.glob("*.iso"))


@pytest.fixture(scope="module")
def not_alma_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("notalma")
    (work / "tree").mkdir()
    (work / "tree/README").write_text("hello\n")
    iso = work / "debian.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "Debian 12", "-o", str(iso),
                    str(work / "tree")], check=True, capture_output=True)
    return iso


@pytest.fixture(scope="module")
def alma_named_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("almaname")
    (work / "tree").mkdir()
    (work / "tree/.discinfo").write_text("1\nAlmaLinux 8.10\nx86_64\n")
    iso = work / "alma-without-boot.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "AlmaLinux-8-10-x86_64-dvd",
                    "-o", str(iso), str(work / "tree")], check=True, capture_output=True)
    return iso


@pytest.mark.parametrize(("case", "code", "message"), [
    ("unset", EXIT_MISSING_INPUT, "BASE_ISO is not set: download AlmaLinux-8.10-x86_64-dvd.iso"),
    ("missing", EXIT_MISSING_INPUT, "does not exist: download AlmaLinux-8.10-x86_64-dvd.iso"),
    ("text", EXIT_WRONG_INPUT, "is not an ISO 9660 image"),
    ("debian", EXIT_WRONG_INPUT, "has volume id 'Debian 12', not an AlmaLinux 8 ISO"),
    ("alma-no-boot", EXIT_WRONG_INPUT, "lacks isolinux/isolinux.cfg, EFI/BOOT/grub.cfg, "
                                       "images/efiboot.img"),
    ("no-xorriso", EXIT_MISSING_TOOL, "missing host tools: xorriso"),
])
def test_bad_base_iso_is_one_clear_line(case: str, code: int, message: str, tmp_path: Path,
                                        not_alma_iso: Path, alma_named_iso: Path) -> None:
    text = tmp_path / "notes.iso"
    text.write_text("not an iso\n" * 100)
    base = {"unset": "", "missing": str(tmp_path / "AlmaLinux.iso"), "text": str(text),
            "debian": str(not_alma_iso), "alma-no-boot": str(alma_named_iso),
            "no-xorriso": str(alma_named_iso)}[case]
    env = {"BASE_ISO": base}
    if case == "no-xorriso":
        env["PATH"] = str(tmp_path / "empty")
    proc = run_py("-m", "image.iso", "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in proc.stdout + proc.stderr
