"""Boot an ISO under QEMU (software emulation, no network) as CD or USB stick, with BIOS
(SeaBIOS) or UEFI (OVMF), and capture the serial console.

Used by the image tests with the synthetic base ISO, whose kernel prints
``VOXNODE-CMDLINE: <cmdline>`` and powers off; also runnable by hand::

    python -m tests.image.qemuboot out/voxnode-0.1.0-x86_64.iso
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
MODES = (("cd", "bios"), ("usb", "bios"), ("cd", "uefi"), ("usb", "uefi"))


@dataclass(frozen=True)
class Boot:
    medium: str
    firmware: str
    console: str
    seconds: float
    returncode: int | None

    @property
    def name(self) -> str:
        return f"{self.medium}-{self.firmware}"

    def line(self, prefix: str) -> str:
        for ln in self.console.replace("\r", "").splitlines():
            if prefix in ln:
                return ln[ln.index(prefix) + len(prefix):].strip()
        return ""


def command(iso: Path, medium: str, firmware: str, vars_copy: Path) -> list[str]:
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-display", "none",
            "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nic", "none",
            "-nodefaults"]
    if firmware == "uefi":
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    if medium == "cd":
        argv += ["-drive", f"file={iso},media=cdrom,if=none,id=cd,readonly=on,format=raw",
                 "-device", "ide-cd,drive=cd,bootindex=0"]
    else:
        argv += ["-drive", f"file={iso},if=none,id=stick,readonly=on,format=raw",
                 "-device", "qemu-xhci", "-device", "usb-storage,drive=stick,bootindex=0"]
    return argv


def start(iso: Path, medium: str, firmware: str, tmp: Path) -> subprocess.Popen[bytes]:
    vars_copy = tmp / f"vars-{medium}-{firmware}.fd"
    if firmware == "uefi":
        shutil.copy2(OVMF_VARS, vars_copy)
    return subprocess.Popen(command(iso, medium, firmware, vars_copy),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _boot(iso: Path, medium: str, firmware: str, tmp: Path, timeout_s: float) -> Boot:
    started = time.monotonic()
    proc = start(iso, medium, firmware, tmp)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        code = None
    return Boot(medium, firmware, out.decode(errors="replace"), time.monotonic() - started,
                code)


def boot_all(iso: Path, modes: tuple[tuple[str, str], ...] = MODES, timeout_s: float = 90,
             parallel: int = max(1, os.cpu_count() or 1)) -> list[Boot]:
    """Boot every mode, ``parallel`` at a time (one per core: software emulation is CPU
    bound, and OVMF's USB boot slows down badly when cores are oversubscribed); each boot
    is killed after ``timeout_s``."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(parallel) as pool:
        futures = [pool.submit(_boot, iso, m, f, Path(tmp), timeout_s) for m, f in modes]
        return [f.result() for f in futures]


if __name__ == "__main__":
    for b in boot_all(Path(sys.argv[1])):
        print(f"{b.name:9} {b.seconds:5.1f} s rc={b.returncode} "
              f"cmdline={b.line('VOXNODE-CMDLINE:')!r} fw={b.line('VOXNODE-FIRMWARE:')}")
