"""Packer runs for the disk images (``make raw``, ``make ami``) and offline validation.

Packer 1.6.6 (Debian 12) has the qemu builder built in and rejects the
``packer { required_plugins }`` block, so for Packer < 1.7 the templates are copied
without ``plugins.pkr.hcl`` into a work directory; newer Packer uses ``packer/`` as is
(after ``packer init``). Inputs come from the ISO build's result (``out/iso.json``: the
ISO's path, sha256 and volume id); the disks Packer made are recorded, with their sha256,
in ``out/packer/raw.json`` or ``out/packer/ami.json`` (``image.artifacts.DiskBuild``). For
``ami`` the AWS disk then goes to ``image.ami``, which registers it (``out/ami.json``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from image import ami
from image.artifacts import Artifact, DiskBuild, IsoBuild, read_result, write_result
from image.buildutil import (
    EXIT_MISSING_INPUT,
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
    step,
)

PACKER_DIR = REPO / "packer"
PLUGINS = "plugins.pkr.hcl"
BUILDS = {"raw": "disk.qemu.raw", "ami": "ami.qemu.aws"}
RESULTS = {"raw": "raw.json", "ami": "ami.json"}  # under out/packer/


def packer_version() -> tuple[int, int, int]:
    need_tools("packer")
    text = run(["packer", "version"])
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise BuildError(f"cannot read the packer version from {text!r}")
    major, minor, patch = (int(x) for x in m.groups())
    return major, minor, patch


def template_dir(work: Path) -> Path:
    """``packer/`` as this Packer accepts it (no plugins block before 1.7)."""
    if packer_version() >= (1, 7, 0):
        return PACKER_DIR
    work.mkdir(parents=True, exist_ok=True)
    for f in sorted(PACKER_DIR.glob("*.pkr.hcl")):
        if f.name != PLUGINS:
            shutil.copy2(f, work / f.name)
    return work


def image_name(version: str) -> str:
    """The file name stem of the disk images (the templates' ``image_name``)."""
    return f"voxnode-{version}-x86_64"


def disk_files(out: Path, target: str, name: str) -> list[Path]:
    """What the template of ``target`` writes, given the ``output_dir`` and ``image_name``
    this module passes it: the raw disk first."""
    if target == "raw":
        return [out / "packer" / "raw" / f"{name}.raw", out / "packer" / "raw" / f"{name}.qcow2"]
    return [out / "packer" / "aws" / f"{name}-aws.raw"]


def iso_vars(iso: IsoBuild, out: Path) -> list[str]:
    """Packer's variables from the ISO build's result. The ISO's digest is not computed
    again here: Packer checks the file against it (``iso_checksum``)."""
    if not iso.iso.path.is_file():
        raise BuildError(f"{iso.iso.path} is missing: build it again with "
                         f"`{IsoBuild.MADE_BY}`", EXIT_MISSING_INPUT)
    if iso.iso.path.stat().st_size != iso.iso.size:
        raise BuildError(f"{iso.iso.path} changed after `{IsoBuild.MADE_BY}` made it (size "
                         f"{iso.iso.size} recorded): build it again", EXIT_WRONG_INPUT)
    volume_id = iso.volume_id.replace(" ", "\\x20")
    return ["-var", f"iso_path={iso.iso.path}", "-var", f"iso_checksum=sha256:{iso.iso.sha256}",
            "-var", f"volume_id={volume_id}", "-var", f"output_dir={out / 'packer'}",
            "-var", f"image_name={image_name(iso.version)}"]


def validate(extra: list[str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tdir = template_dir(Path(tmp) / "packer")
        with step(f"packer validate ({', '.join(sorted(p.name for p in tdir.glob('*.hcl')))})"):
            run(["packer", "validate", *(extra or []), "."], cwd=tdir)


def build(target: str, iso: IsoBuild, out: Path, accelerator: str) -> DiskBuild:
    """Install ``iso`` onto the disk(s) of ``target``; what was made, with sha256."""
    need_tools("qemu-system-x86_64", "qemu-img")
    variables = [*iso_vars(iso, out), "-var", f"accelerator={accelerator}"]
    validate(variables)
    (out / "packer").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tdir = template_dir(Path(tmp) / "packer")
        with step(f"packer build {BUILDS[target]} (an unattended install: 10-60 min)"):
            env = {**os.environ, "PACKER_LOG": os.environ.get("PACKER_LOG", "0")}
            run(["packer", "build", "-force", f"-only={BUILDS[target]}", *variables, "."],
                cwd=tdir, env=env)
    files = disk_files(out, target, image_name(iso.version))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise BuildError(f"packer build {BUILDS[target]} did not write {', '.join(missing)}")
    with step("sha256 of the disk images"):
        disks = tuple(Artifact.of(f) for f in files)
    if target == "raw":  # for vendors checking what they preload (`sha256sum -c SHA256SUMS`)
        (files[0].parent / "SHA256SUMS").write_text(
            "".join(f"{d.sha256}  {d.path.name}\n" for d in disks))
    return DiskBuild(target=target, disks=disks, iso_sha256=iso.iso.sha256, version=iso.version)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m image.packer")
    p.add_argument("action", choices=("validate", "raw", "ami"))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--iso", type=Path, help="the result of `make iso` (default OUT/iso.json)")
    p.add_argument("--accelerator", default=os.environ.get("ACCEL", "kvm"),
                   choices=("kvm", "tcg"))
    p.add_argument("--bucket", default=os.environ.get("VOXNODE_S3_BUCKET", ""),
                   help="ami: the S3 bucket of the snapshot import (env VOXNODE_S3_BUCKET)")
    args = p.parse_args(argv)
    if args.action == "validate":
        validate()
        say("packer templates valid")
        return 0
    out = output_dir(args.out, "--out", create=False)
    if args.action == "ami":
        ami.preflight(args.bucket)  # before an install of up to an hour, not after it
    iso = read_result(absolute(args.iso) if args.iso else out / "iso.json", IsoBuild)
    disk = build(args.action, iso, out, args.accelerator)
    written = write_result(disk, out / "packer" / RESULTS[args.action])
    say(f"{args.action}: {', '.join(str(d.path) for d in disk.disks)} ({written})")
    if args.action == "ami":
        registered = ami.register(disk, name=image_name(disk.version), bucket=args.bucket)
        say(f"ami: {registered.image_id} ({write_result(registered, out / 'ami.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main)(None))
