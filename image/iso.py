"""The installer ISO (``make iso BASE_ISO=…``): an AlmaLinux 8 ISO remastered the way
lorax's mkksiso does it.

- adds the kickstarts (``/ks.cfg`` = the unattended install, ``/ks-disk.cfg``,
  ``/ks-aws.cfg`` for the Packer builds) and the appliance repository (``/voxnode``);
- adds ``inst.ks=hd:LABEL=<volume id>:/ks.cfg`` to every installer boot entry: BIOS
  (``isolinux/isolinux.cfg``) and UEFI (``EFI/BOOT/grub.cfg`` and the grub.cfg inside
  ``images/efiboot.img``, edited with mtools); the label is written exactly as the entry's
  own ``inst.stage2=`` writes it (spaces escaped as ``\\x20``). The install entry becomes
  the default with a 5 s timeout, so the install needs no key press;
- keeps the boot records (xorriso ``-boot_image any replay``: El Torito BIOS + EFI,
  isohybrid MBR/GPT, so the file works as CD and as USB stick) and the volume id;
- implants the media checksum (``implantisomd5``).

Reads what ``make rpm`` produced from its result, ``out/rpm.json`` (the RPM and the
repository, checked against their recorded sha256). Outputs
``out/voxnode-<version>-x86_64.iso``, ``.iso.sha256``, ``.manifest.json`` and the step's
result ``out/iso.json`` (``image.artifacts.IsoBuild``) that ``make raw`` and ``make ami``
read. With the same inputs and ``SOURCE_DATE_EPOCH`` the ISO is byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from image import kickstart
from image.artifacts import Artifact, IsoBuild, RpmBuild, read_result, write_result
from image.buildutil import (
    EXIT_MISSING_INPUT,
    EXIT_USAGE,
    EXIT_WRONG_INPUT,
    OUT,
    REPO,
    BuildError,
    absolute,
    guarded,
    need_tools,
    output_dir,
    run,
    say,
    sha256,
    source_date_epoch,
    step,
    version,
)

DOWNLOAD_HINT = ("download AlmaLinux-8.10-x86_64-dvd.iso from "
                 "https://repo.almalinux.org/almalinux/8/isos/x86_64/ and run "
                 "`make iso BASE_ISO=/path/to/AlmaLinux-8.10-x86_64-dvd.iso`")
REQUIRED = ("isolinux/isolinux.cfg", "EFI/BOOT/grub.cfg", "images/efiboot.img", ".discinfo")
TIMEOUT_S = 5
_VOLID_OK = re.compile(r"^[A-Za-z0-9 ._-]{1,32}$")


@dataclass(frozen=True)
class BaseIso:
    path: Path
    volid: str
    release: str  # "8.10"
    dvd: bool  # has BaseOS/AppStream (offline install) vs boot ISO


def escape_label(volid: str) -> str:
    """Volume id as udev/anaconda want it on the kernel command line."""
    return volid.replace(" ", "\\x20")


def _xorriso_ls(iso: Path, path: str) -> list[str]:
    out = run(["xorriso", "-indev", iso, "-lsd", path])
    return [ln for ln in out.splitlines() if ln.strip()]


def inspect(path_text: str) -> BaseIso:
    """Check BASE_ISO is an AlmaLinux 8 x86_64 ISO with the layout we edit."""
    if not path_text.strip():
        raise BuildError(f"BASE_ISO is not set: {DOWNLOAD_HINT}", EXIT_MISSING_INPUT)
    path = absolute(Path(path_text))
    if not path.is_file():
        raise BuildError(f"BASE_ISO {path} does not exist: {DOWNLOAD_HINT}", EXIT_MISSING_INPUT)
    need_tools("xorriso", "mcopy", "implantisomd5", "checkisomd5")
    with open(path, "rb") as f:
        f.seek(0x8001)
        signature = f.read(5)
    if signature != b"CD001":  # the ISO 9660 primary volume descriptor
        raise BuildError(f"BASE_ISO {path} is not an ISO 9660 image ({path.stat().st_size} "
                         f"bytes): {DOWNLOAD_HINT}", EXIT_WRONG_INPUT)
    try:
        info = run(["xorriso", "-indev", path, "-pvd_info"])
    except BuildError as exc:
        raise BuildError(f"BASE_ISO {path} is not an ISO 9660 image ({path.stat().st_size} "
                         f"bytes): {DOWNLOAD_HINT}", EXIT_WRONG_INPUT) from exc
    match = re.search(r"^Volume Id\s*:\s*(.*?)\s*$", info, re.M)
    volid = match.group(1) if match else ""
    if not re.match(r"^AlmaLinux-8", volid) or not _VOLID_OK.match(volid):
        raise BuildError(f"BASE_ISO {path} has volume id {volid!r}, not an AlmaLinux 8 "
                         f"ISO: {DOWNLOAD_HINT}", EXIT_WRONG_INPUT)
    with tempfile.TemporaryDirectory() as tmp:
        missing = []
        for rel in REQUIRED:
            try:
                _extract(path, rel, Path(tmp) / Path(rel).name)
            except BuildError:
                missing.append(rel)
        if missing:
            raise BuildError(f"BASE_ISO {path} lacks {', '.join(missing)}: not an AlmaLinux 8 "
                             f"installer ISO: {DOWNLOAD_HINT}", EXIT_WRONG_INPUT)
        disc = (Path(tmp) / ".discinfo").read_text().splitlines()
    release = disc[1].split()[-1] if len(disc) > 1 else ""
    arch = disc[2].strip() if len(disc) > 2 else ""
    if arch != "x86_64" or not release.startswith("8."):
        raise BuildError(f"BASE_ISO {path} is AlmaLinux {release or '?'} for {arch or '?'}; "
                         f"an AlmaLinux 8 x86_64 ISO is needed: {DOWNLOAD_HINT}",
                         EXIT_WRONG_INPUT)
    try:
        dvd = bool(_xorriso_ls(path, "/BaseOS/repodata"))
    except BuildError:
        dvd = False
    return BaseIso(path=path, volid=volid, release=release, dvd=dvd)


def _extract(iso: Path, rel: str, dest: Path) -> Path:
    run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", f"/{rel}", dest])
    if not dest.exists():
        raise BuildError(f"{rel} not found in {iso}")
    dest.chmod(0o644)
    return dest


def _ks_arg(label: str, ks_name: str = "ks.cfg") -> str:
    return f"inst.ks=hd:LABEL={label}:/{ks_name}"


def _with_ks(line: str, kernel_line: str) -> str:
    """``line`` with inst.ks after its inst.stage2, if it is a kernel line (``kernel_line``,
    a regular expression) of the installer that has none yet."""
    m = re.search(r"inst\.stage2=hd:LABEL=(\S+)", line)
    if re.match(kernel_line, line) and m and "inst.ks=" not in line:
        return line.replace(m.group(0), f"{m.group(0)} {_ks_arg(m.group(1))}", 1)
    return line


def edit_isolinux(text: str, volid: str) -> str:
    """inst.ks on every installer ``append``; the install entry default, short timeout."""
    out: list[str] = []
    label = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("label "):
            label = stripped.split(None, 1)[1]
        if re.match(r"^\s*menu default\s*$", line):
            continue
        if re.match(r"^\s*timeout\s+\d+", line):
            line = f"timeout {TIMEOUT_S * 10}"
        line = _with_ks(line, r"^\s*append\s")
        out.append(line)
        if stripped == "label linux":
            out.append("  menu default")
    if label == "" or "inst.ks=" not in "\n".join(out):
        raise BuildError("isolinux.cfg has no installer entry (append … inst.stage2=…)",
                         EXIT_WRONG_INPUT)
    return "\n".join(out) + "\n"


def edit_grub(text: str, volid: str) -> str:
    """inst.ks on every installer ``linux``/``linuxefi``; entry 0 (install) default."""
    out: list[str] = []
    for line in text.splitlines():
        if re.match(r'^\s*set default=', line):
            line = 'set default="0"'
        elif re.match(r"^\s*set timeout=", line):
            line = f"set timeout={TIMEOUT_S}"
        line = _with_ks(line, r"^\s*linux(efi)?\s")
        out.append(line)
    if "inst.ks=" not in "\n".join(out):
        raise BuildError("grub.cfg has no installer entry (linux … inst.stage2=…)",
                         EXIT_WRONG_INPUT)
    return "\n".join(out) + "\n"


def _tool_version(argv: list[str]) -> str:
    try:
        return run(argv).splitlines()[0].strip()
    except (BuildError, IndexError):
        return "?"


def remaster(base: BaseIso, rpm: RpmBuild, out_iso: Path, *, build_id: str, epoch: int,
             base_url: str = "") -> dict[str, object]:
    """Write ``out_iso`` with the appliance repository of ``rpm``; returns the manifest."""
    repo = rpm.repo
    if not base.dvd and not base_url:
        raise BuildError(f"BASE_ISO {base.path} is a boot ISO (no BaseOS/AppStream): give "
                         "BASE_URL=<AlmaLinux 8 mirror> for a network install, or use the "
                         "DVD ISO for an offline install", EXIT_WRONG_INPUT)
    work = Path(tempfile.mkdtemp(prefix="voxnode-iso-", dir=out_iso.parent))
    try:
        with step(f"kickstarts (volume id {base.volid!r})"):
            ks_files = kickstart.write_all(work / "ks", volid=base.volid, build_id=build_id,
                                           version_=rpm.version, base_url=base_url)
        with step("boot entries: isolinux.cfg, EFI/BOOT/grub.cfg, efiboot.img:/EFI/BOOT/grub.cfg"):
            iso_cfg = _extract(base.path, "isolinux/isolinux.cfg", work / "isolinux.cfg")
            iso_cfg.write_text(edit_isolinux(iso_cfg.read_text(), base.volid))
            grub = _extract(base.path, "EFI/BOOT/grub.cfg", work / "grub.cfg")
            grub.write_text(edit_grub(grub.read_text(), base.volid))
            efiboot = _extract(base.path, "images/efiboot.img", work / "efiboot.img")
            inner = work / "efi-grub.cfg"
            run(["mcopy", "-n", "-i", efiboot, "::/EFI/BOOT/grub.cfg", inner])
            inner.write_text(edit_grub(inner.read_text(), base.volid))
            os.utime(inner, (epoch, epoch))
            run(["mcopy", "-o", "-m", "-i", efiboot, inner, "::/EFI/BOOT/grub.cfg"],
                env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
        for path in [*work.rglob("*"), *repo.rglob("*")]:
            os.utime(path, (epoch, epoch), follow_symlinks=False)
        stamp = time.strftime("%Y%m%d%H%M%S00", time.gmtime(epoch))
        tmp_iso = out_iso.with_suffix(".iso.tmp")
        tmp_iso.unlink(missing_ok=True)
        maps: list[str | Path] = []
        for ks in ks_files:
            maps += ["-map", ks, f"/{ks.name}"]
        maps += ["-map", repo, "/voxnode", "-map", iso_cfg, "/isolinux/isolinux.cfg",
                 "-map", grub, "/EFI/BOOT/grub.cfg", "-map", efiboot, "/images/efiboot.img"]
        with step("xorriso: replay the boot records onto the new tree"):
            run(["xorriso", "-no_rc", "-indev", base.path, "-outdev", tmp_iso,
                 "-boot_image", "any", "replay", *maps,
                 "-volume_date", "uuid", stamp, "-volume_date", "all_file_dates", stamp,
                 "-alter_date_r", "b", f"={epoch}", "/", "--",
                 "-alter_date_r", "c", f"={epoch}", "/", "--",
                 "-alter_date_r", "m", f"={epoch}", "/", "--",
                 "-alter_date_r", "a", f"={epoch}", "/", "--",
                 "-commit"], env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
        with step("implantisomd5 (media check)"):
            run(["implantisomd5", "--force", tmp_iso])
            run(["checkisomd5", "--verbose", tmp_iso])
        os.replace(tmp_iso, out_iso)
        manifest: dict[str, object] = {
            "artifact": out_iso.name, "version": rpm.version, "build_id": build_id,
            "source_date_epoch": epoch, "sha256": sha256(out_iso),
            "size": out_iso.stat().st_size, "volume_id": base.volid,
            "inputs": {
                "base_iso": {"name": base.path.name, "sha256": sha256(base.path),
                             "size": base.path.stat().st_size, "release": base.release,
                             "kind": "dvd" if base.dvd else "boot"},
                "rpms": [{"name": rpm.rpm.path.name, "sha256": rpm.rpm.sha256}],
                "kickstarts": {p.name: sha256(p) for p in ks_files},
                "base_url": base_url or None,
            },
            "packages": _package_list(ks_files[0], rpm.rpm.path),
            "tools": {"xorriso": _tool_version(["xorriso", "-version"]),
                      "createrepo_c": _tool_version(["createrepo_c", "--version"]),
                      "rpm": _tool_version(["rpm", "--version"])},
            "boot": {"inst.ks": _ks_arg(escape_label(base.volid)),
                     "entries": ["isolinux/isolinux.cfg", "EFI/BOOT/grub.cfg",
                                 "images/efiboot.img:/EFI/BOOT/grub.cfg"]},
        }
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _package_list(ks: Path, rpm: Path) -> dict[str, list[str]]:
    text = ks.read_text()
    section = text.split("%packages", 1)[1].split("%end", 1)[0]
    wanted = [ln.strip() for ln in section.splitlines()[1:] if ln.strip()]
    appliance = run(["rpm", "-qp", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n", rpm]).split()
    return {"kickstart": wanted, "appliance_repository": appliance}


def build(base: BaseIso, rpm: RpmBuild, out: Path, *, build_id: str, epoch: int,
          base_url: str = "") -> IsoBuild:
    """The whole step: the ISO, its ``.sha256`` and its manifest in ``out``."""
    out_iso = out / f"voxnode-{rpm.version}-x86_64.iso"
    manifest = remaster(base, rpm, out_iso, build_id=build_id, epoch=epoch, base_url=base_url)
    digest = str(manifest["sha256"])
    Path(f"{out_iso}.sha256").write_text(f"{digest}  {out_iso.name}\n")
    manifest_path = Path(str(out_iso).removesuffix(".iso") + ".manifest.json")
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return IsoBuild(iso=Artifact(out_iso, digest, out_iso.stat().st_size),
                    manifest=manifest_path, volume_id=base.volid, version=rpm.version,
                    build_id=build_id)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m image.iso", description=__doc__.split("\n")[0])
    p.add_argument("--base-iso", default=os.environ.get("BASE_ISO", ""),
                   help="AlmaLinux 8 x86_64 DVD (or boot) ISO (env BASE_ISO)")
    p.add_argument("--base-url", default=os.environ.get("BASE_URL", ""),
                   help="AlmaLinux 8 mirror for a boot ISO (env BASE_URL)")
    p.add_argument("--rpm", type=Path, default=OUT / "rpm.json",
                   help="the result of `make rpm` (default %(default)s)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--build-id", default=os.environ.get("BUILD_ID", ""))
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else 0
    out, rpm_result = output_dir(args.out, "--out", create=False), absolute(args.rpm)
    started = time.monotonic()
    epoch = source_date_epoch()
    build_id = args.build_id or f"{version()}-{time.strftime('%Y%m%d%H%M%S', time.gmtime(epoch))}"
    with step("check BASE_ISO"):
        base = inspect(args.base_iso)
        say(f"    {base.path.name}: volume id {base.volid!r}, AlmaLinux {base.release}, "
            f"{'DVD' if base.dvd else 'boot'} ISO")
    rpm = read_result(rpm_result, RpmBuild).check()
    if rpm.version != version():
        raise BuildError(f"{rpm_result} holds the RPM of version {rpm.version}, this checkout "
                         f"is {version()}: build it again with `make rpm`", EXIT_WRONG_INPUT)
    out = output_dir(out, "--out")
    result = build(base, rpm, out, build_id=build_id, epoch=epoch, base_url=args.base_url)
    written = write_result(result, out / "iso.json")
    rel = result.iso.path.relative_to(REPO) if result.iso.path.is_relative_to(REPO) else (
        result.iso.path)
    say(f"iso: {rel} ({result.iso.size / 1e6:.1f} MB, sha256 {result.iso.sha256[:16]}…) "
        f"in {time.monotonic() - started:.1f} s ({written})")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main)(None))
