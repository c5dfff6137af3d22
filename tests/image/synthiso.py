"""A synthetic AlmaLinux 8 base ISO for the image tests (no real ISO on these machines).

Same layout and boot records as AlmaLinux's DVD: ``isolinux/`` (isolinux.bin, isolinux.cfg,
vmlinuz, initrd.img), ``images/pxeboot/`` (vmlinuz, initrd.img), ``EFI/BOOT/`` (BOOTX64.EFI,
grub.cfg), ``images/efiboot.img`` (FAT with the EFI files), ``.discinfo``, ``.treeinfo``,
``BaseOS``/``AppStream`` repositories (empty metadata), an isohybrid MBR + GPT (bootable
as CD and USB stick, BIOS and UEFI). Its volume id contains a space, escaped as ``\\x20``
in the boot entries like lorax does. The "kernel" is Debian's cloud kernel (from apt) with
a busybox initramfs whose init prints ``/proc/cmdline`` on the serial console and powers
off. Built once per input set into a cache directory.

Run directly: ``python -m tests.image.synthiso OUT.iso``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VOLID = "AlmaLinux-8-10-x86_64 dvd"
ESCAPED = VOLID.replace(" ", "\\x20")
CACHE = Path(os.environ.get("VOXNODE_IMAGE_CACHE", "/var/cache/voxnode-image"))
MARKER = "VOXNODE-CMDLINE:"
EPOCH = 1700000000

INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "{MARKER} $(/bin/busybox cat /proc/cmdline)"
echo "VOXNODE-FIRMWARE: $([ -d /sys/firmware/efi ] && echo uefi || echo bios)"
/bin/busybox poweroff -f
"""

ISOLINUX_CFG = f"""default vesamenu.c32
timeout 600
serial 0 115200
display boot.msg
menu title AlmaLinux 8.10
label linux
  menu label ^Install AlmaLinux 8.10
  kernel vmlinuz
  append initrd=initrd.img inst.stage2=hd:LABEL={ESCAPED} quiet console=ttyS0
label check
  menu label Test this ^media & install AlmaLinux 8.10
  menu default
  kernel vmlinuz
  append initrd=initrd.img inst.stage2=hd:LABEL={ESCAPED} rd.live.check quiet console=ttyS0
menu separator
label rescue
  menu label ^Rescue a AlmaLinux system
  kernel vmlinuz
  append initrd=initrd.img inst.stage2=hd:LABEL={ESCAPED} inst.rescue quiet console=ttyS0
label local
  menu label Boot from ^local drive
  localboot 0xffff
"""

GRUB_CFG = f"""set default="1"
function load_video {{
  insmod all_video
}}
load_video
set gfxpayload=keep
insmod gzio
insmod part_gpt
insmod ext2
insmod iso9660
set timeout=60
### END /etc/grub.d/00_header ###
search --no-floppy --set=root -l '{VOLID}'
### BEGIN /etc/grub.d/10_linux ###
menuentry 'Install AlmaLinux 8.10' --class fedora --class gnu-linux --class gnu --class os {{
\tlinux /images/pxeboot/vmlinuz inst.stage2=hd:LABEL={ESCAPED} quiet console=ttyS0
\tinitrd /images/pxeboot/initrd.img
}}
menuentry 'Test this media & install AlmaLinux 8.10' --class fedora --class gnu-linux {{
\tlinux /images/pxeboot/vmlinuz inst.stage2=hd:LABEL={ESCAPED} rd.live.check quiet console=ttyS0
\tinitrd /images/pxeboot/initrd.img
}}
"""

# the EFI binary (grub-mkstandalone) reads the grub.cfg next to it, like shim + grubx64 do
EMBEDDED_CFG = "configfile $cmdpath/grub.cfg\n"


def _run(argv: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed: {proc.stderr.strip()[-800:]}")


def kernel(cache: Path) -> Path:
    """vmlinuz of Debian's cloud kernel package (downloaded from the apt mirror once)."""
    dest = cache / "vmlinuz"
    if dest.exists():
        return dest
    deps = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"],
                          capture_output=True, text=True, check=True).stdout
    pkg = next(line.split(":", 1)[1].strip() for line in deps.splitlines()
               if "Depends:" in line and "linux-image-" in line)
    with tempfile.TemporaryDirectory() as tmp:
        _run(["apt-get", "download", "-q", pkg], cwd=Path(tmp))
        deb = next(Path(tmp).glob("*.deb"))
        _run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"])
        vmlinuz = next(Path(f"{tmp}/x/boot").glob("vmlinuz-*"))
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy2(vmlinuz, dest)
    return dest


def initramfs() -> bytes:
    """A gzip'd newc cpio: /init (the script above) and /bin/busybox (static)."""
    busybox = Path("/bin/busybox")
    if not busybox.exists() or b"ld-linux" in busybox.read_bytes()[:4096]:
        busybox = Path("/usr/lib/busybox-static/busybox") if Path(
            "/usr/lib/busybox-static/busybox").exists() else busybox
    entries = [("bin", None, 0o40755), ("proc", None, 0o40755), ("sys", None, 0o40755),
               ("dev", None, 0o40755), ("init", INIT.encode(), 0o100755),
               ("bin/busybox", busybox.read_bytes(), 0o100755)]
    out = io.BytesIO()
    for ino, (name, data, mode) in enumerate([*entries, ("TRAILER!!!", b"", 0)], start=1):
        body = data or b""
        fields = [ino, mode, 0, 0, 1, EPOCH, len(body), 0, 0, 0, 0, len(name) + 1, 0]
        header = "070701" + "".join(f"{f:08x}" for f in fields)
        out.write(header.encode() + name.encode() + b"\0")
        out.write(b"\0" * (-(110 + len(name) + 1) % 4))
        out.write(body)
        out.write(b"\0" * (-len(body) % 4))
    return gzip.compress(out.getvalue(), mtime=EPOCH)


def build(dest: Path, cache: Path = CACHE) -> Path:
    """Build the synthetic ISO at ``dest`` (cached by the hash of its inputs)."""
    key = hashlib.sha256((INIT + ISOLINUX_CFG + GRUB_CFG + EMBEDDED_CFG + VOLID).encode())
    cached = cache / f"synthetic-{key.hexdigest()[:12]}.iso"
    if not cached.exists():
        with tempfile.TemporaryDirectory() as tmp:
            _build(Path(tmp), cached, kernel(cache))
        for old in cache.glob("synthetic-*.iso"):
            if old != cached:
                old.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(cached, dest)
    return dest


def _build(work: Path, out: Path, vmlinuz: Path) -> None:
    tree = work / "tree"
    for d in ("isolinux", "images/pxeboot", "EFI/BOOT", "BaseOS/Packages",
              "AppStream/Packages"):
        (tree / d).mkdir(parents=True)
    initrd = initramfs()
    for d in ("isolinux", "images/pxeboot"):
        shutil.copy2(vmlinuz, tree / d / "vmlinuz")
        (tree / d / "initrd.img").write_bytes(initrd)
    shutil.copy2("/usr/lib/ISOLINUX/isolinux.bin", tree / "isolinux")
    for mod in ("ldlinux.c32", "vesamenu.c32", "libcom32.c32", "libutil.c32"):
        shutil.copy2(f"/usr/lib/syslinux/modules/bios/{mod}", tree / "isolinux")
    (tree / "isolinux/isolinux.cfg").write_text(ISOLINUX_CFG)
    (tree / "isolinux/boot.msg").write_text("\nAlmaLinux 8.10 (synthetic test medium)\n")
    (tree / "EFI/BOOT/grub.cfg").write_text(GRUB_CFG)
    (work / "embedded.cfg").write_text(EMBEDDED_CFG)
    _run(["grub-mkstandalone", "-O", "x86_64-efi", "-o", str(tree / "EFI/BOOT/BOOTX64.EFI"),
          "--modules=part_gpt part_msdos fat iso9660 search search_label linux normal "
          "configfile echo all_video serial terminal gzio",
          "--locales=", "--fonts=", "--themes=",
          f"boot/grub/grub.cfg={work / 'embedded.cfg'}"])
    (tree / ".discinfo").write_text(f"{EPOCH}.000000\nAlmaLinux 8.10\nx86_64\n")
    (tree / ".treeinfo").write_text(
        "[general]\nfamily = AlmaLinux\nversion = 8.10\narch = x86_64\n"
        "[release]\nname = AlmaLinux\nshort = AlmaLinux\nversion = 8.10\n"
        "[tree]\narch = x86_64\nvariants = AppStream,BaseOS\n")
    for repo in ("BaseOS", "AppStream"):
        _run(["createrepo_c", "--quiet", "--simple-md-filenames", "--revision", str(EPOCH),
              "--set-timestamp-to-revision", str(tree / repo)])
    # efiboot.img: FAT holding EFI/BOOT/{BOOTX64.EFI,grub.cfg}
    efi = tree / "images/efiboot.img"
    size_kb = (tree / "EFI/BOOT/BOOTX64.EFI").stat().st_size // 1024 + 1024
    _run(["mkfs.vfat", "-C", "-n", "ANACONDA", "-i", "12345678", str(efi), str(size_kb)])
    _run(["mmd", "-i", str(efi), "::/EFI", "::/EFI/BOOT"])
    _run(["mcopy", "-i", str(efi), str(tree / "EFI/BOOT/BOOTX64.EFI"),
          str(tree / "EFI/BOOT/grub.cfg"), "::/EFI/BOOT/"])
    for p in tree.rglob("*"):
        os.utime(p, (EPOCH, EPOCH))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    _run(["xorriso", "-as", "mkisofs", "-o", str(tmp_out), "-R", "-J", "-V", VOLID,
          "-isohybrid-mbr", "/usr/lib/ISOLINUX/isohdpfx.bin",
          "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
          "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
          "-eltorito-alt-boot", "-e", "images/efiboot.img", "-no-emul-boot",
          "-isohybrid-gpt-basdat", str(tree)])
    os.replace(tmp_out, out)


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
