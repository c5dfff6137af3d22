"""Image tests: the host tools `make image-apt` installs; one build of the RPM, the
synthetic base ISO and the remastered ISO per session.

The build runs the README's commands as written, from the root of a temporary copy of the
repository: ``VENDOR_PUBKEY=vendor.pub make rpm``, then ``make iso BASE_ISO=<relative
path>`` (which makes the RPM again, over the existing ``out/``), with make's default
``IMAGE_OUT=out``. The copy keeps the repository itself clean; the frozen binary and the
synthetic ISO come from the caches the builds share (``/var/cache/voxnode-image``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from image.buildutil import sha256, version
from tests.image import synthiso

REPO = Path(__file__).resolve().parents[2]
EPOCH = "1750000000"
TOOLS = ("xorriso", "mcopy", "implantisomd5", "checkisomd5", "rpmbuild", "createrepo_c",
         "qemu-system-x86_64", "packer", "patchelf", "grub-mkstandalone", "mkfs.vfat")


def tool_check() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"host tools missing: {', '.join(missing)} (run `make image-apt`)")


@dataclass(frozen=True)
class Build:
    root: Path  # the copy of the repository the commands ran in
    out: Path  # root / "out"
    base_iso: Path
    iso: Path
    rpm: Path
    log: str
    seconds: float
    files_before: frozenset[str]  # the copy's files (relative paths) before the build
    first_rpm_sha256: str  # the RPM `make rpm` made, before `make iso` made it again


def run_py(*args: str, env: dict[str, str] | None = None,
           timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, **(env or {})})


# what a fresh clone does not have: build outputs, caches, the virtual environment
NOT_IN_A_CLONE = (".git", ".venv", "out", "build", "dist", "__pycache__", "*.egg-info",
                  ".mypy_cache", ".ruff_cache", ".pytest_cache", ".stamp-*")


def files_under(root: Path) -> frozenset[str]:
    """Relative paths of the files under ``root``, without the virtual environment and
    Python's byte-code caches."""
    return frozenset(str(p.relative_to(root)) for p in root.rglob("*")
                     if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts
                     and p.relative_to(root).parts[0] != ".venv")


def repository_copy(dest: Path) -> Path:
    """The working tree as a fresh clone has it, with a ``.venv`` that is this test run's
    interpreter (so make's `setup` finds it installed and installs nothing)."""
    shutil.copytree(REPO, dest, symlinks=True, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE))
    python = dest / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (dest / ".venv" / ".installed").touch()
    return dest


def make(root: Path, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    """``make ARGS`` from ``root``, as an operator types it there."""
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=root,
                          capture_output=True, text=True, timeout=1200, check=False,
                          env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, **(env or {})})
    if proc.returncode != 0:
        pytest.fail(f"make {' '.join(args)} in {root} failed ({proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """`make rpm` and `make iso BASE_ISO=…` as the README gives them, with relative paths,
    in a copy of the repository; the base is the synthetic ISO next to that copy."""
    tool_check()
    work = tmp_path_factory.mktemp("image")
    base = synthiso.build(work / "AlmaLinux-8.10-x86_64-dvd.iso")
    root = repository_copy(work / "voxnode")
    (root / "vendor.pub").write_bytes(
        ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    before = files_under(root)
    started = time.monotonic()
    rpm_step = make(root, "rpm", env={"VENDOR_PUBKEY": "vendor.pub"})
    first_rpm = sha256(next((root / "out" / "rpm").glob("voxnode-*.rpm")))
    iso_step = make(root, "iso", f"BASE_ISO=../{base.name}", env={"VENDOR_PUBKEY": "vendor.pub"})
    seconds = time.monotonic() - started
    out = root / "out"
    iso = out / f"voxnode-{version()}-x86_64.iso"
    rpm = next((out / "rpm").glob("voxnode-*.rpm"))
    return Build(root=root, out=out, base_iso=base, iso=iso, rpm=rpm,
                 log=rpm_step.stdout + iso_step.stdout, seconds=seconds, files_before=before,
                 first_rpm_sha256=first_rpm)
