"""Packer runs for the disk images (``make raw``, ``make ami``) and offline validation.

Packer 1.6.6 (Debian 12) has the qemu builder built in and rejects the
``packer { required_plugins }`` block, so for Packer < 1.7 the templates are copied
without ``plugins.pkr.hcl`` into a work directory; newer Packer uses ``packer/`` as is
(after ``packer init``). Inputs come from the ISO build: its path, sha256 and volume id.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from image.buildutil import (
    EXIT_MISSING_INPUT,
    OUT,
    REPO,
    BuildError,
    guarded,
    need_tools,
    output_dir,
    run,
    say,
    step,
    version,
)

PACKER_DIR = REPO / "packer"
PLUGINS = "plugins.pkr.hcl"
BUILDS = {"raw": "disk.qemu.raw", "ami": "ami.qemu.aws"}


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


def iso_vars(out: Path) -> list[str]:
    iso = out / f"voxnode-{version()}-x86_64.iso"
    manifest = out / f"voxnode-{version()}-x86_64.manifest.json"
    if not iso.exists() or not manifest.exists():
        raise BuildError(f"{iso} not found: build it first with `make iso BASE_ISO=…`",
                         EXIT_MISSING_INPUT)
    data = json.loads(manifest.read_text())
    return ["-var", f"iso_path={iso}", "-var", f"iso_checksum=sha256:{data['sha256']}",
            "-var", f"volume_id={str(data['volume_id']).replace(' ', chr(92) + 'x20')}",
            "-var", f"output_dir={out / 'packer'}", "-var", f"version={version()}",
            "-var", f"repo_dir={REPO}"]


def validate(extra: list[str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tdir = template_dir(Path(tmp) / "packer")
        with step(f"packer validate ({', '.join(sorted(p.name for p in tdir.glob('*.hcl')))})"):
            run(["packer", "validate", *(extra or []), "."], cwd=tdir)


def build(target: str, out: Path, accelerator: str) -> None:
    need_tools("qemu-system-x86_64", "qemu-img")
    variables = [*iso_vars(out), "-var", f"accelerator={accelerator}"]
    validate(variables)
    (out / "packer").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tdir = template_dir(Path(tmp) / "packer")
        with step(f"packer build {BUILDS[target]} (an unattended install: 10-60 min)"):
            env = {**os.environ, "PACKER_LOG": os.environ.get("PACKER_LOG", "0")}
            run(["packer", "build", "-force", f"-only={BUILDS[target]}", *variables, "."],
                cwd=tdir, env=env)
    say(f"{target}: images under {out / 'packer'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m image.packer")
    p.add_argument("action", choices=("validate", "raw", "ami"))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--accelerator", default=os.environ.get("ACCEL", "kvm"),
                   choices=("kvm", "tcg"))
    args = p.parse_args(argv)
    if args.action == "validate":
        validate()
        say("packer templates valid")
    else:
        build(args.action, output_dir(args.out, "--out", create=False), args.accelerator)
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main)(None))
