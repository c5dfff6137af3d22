"""Image tests: the host tools `make image-apt` installs; one build of the RPM, the
synthetic base ISO and the remastered ISO per session (into a temporary out directory)."""

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

from image.buildutil import version
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
    out: Path
    base_iso: Path
    iso: Path
    rpm: Path
    log: str
    seconds: float


def run_py(*args: str, env: dict[str, str] | None = None,
           timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, **(env or {})})


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """`make rpm iso` into a temporary out directory, from the synthetic base ISO."""
    tool_check()
    work = tmp_path_factory.mktemp("image")
    base = synthiso.build(work / "AlmaLinux-8.10-x86_64-dvd.iso")
    out = work / "out"
    vendor_pub = work / "vendor.pub"
    vendor_pub.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    started = time.monotonic()
    proc = subprocess.run(
        ["make", "--no-print-directory", "rpm", "iso", f"BASE_ISO={base}",
         f"IMAGE_OUT={out}", f"VENDOR_PUBKEY={vendor_pub}"], cwd=REPO, capture_output=True,
        text=True, timeout=1200, check=False, env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH})
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        pytest.fail(f"make rpm iso failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    iso = out / f"voxnode-{version()}-x86_64.iso"
    rpm = next((out / "rpm").glob("voxnode-*.rpm"))
    return Build(out=out, base_iso=base, iso=iso, rpm=rpm, log=proc.stdout, seconds=seconds)
