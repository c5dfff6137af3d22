"""Kickstarts: every variant renders, passes pykickstart's RHEL8 validator and matches its
golden file; the %pre disk chooser picks the right disks (fake lsblk/blkid) and its
partitioning validates too."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pykickstart.parser import KickstartParser
from pykickstart.version import RHEL8, makeVersion

from image import kickstart
from image.buildutil import BuildError

GOLDEN = Path(__file__).parent / "golden"
VOLID = "AlmaLinux-8-10-x86_64-dvd"
KSVALIDATOR = Path(sys.executable).parent / "ksvalidator"


def rendered(variant: str, base_url: str = "") -> str:
    return kickstart.render(variant, volid=VOLID, build_id="0.1.0-golden", version_="0.1.0",
                            base_url=base_url)


@pytest.mark.parametrize("variant", kickstart.VARIANTS)
def test_variant_passes_ksvalidator_rhel8(variant: str, tmp_path: Path) -> None:
    ks = tmp_path / kickstart.ks_file_name(variant)
    ks.write_text(rendered(variant))
    proc = subprocess.run([str(KSVALIDATOR), "-v", "RHEL8", str(ks)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", kickstart.VARIANTS)
def test_variant_matches_golden(variant: str) -> None:
    path = GOLDEN / f"{variant}.ks"
    text = rendered(variant)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"golden {path.name} missing: run with UPDATE_GOLDEN=1 and review"
    assert text == path.read_text(), f"rendered {variant} differs from golden {path.name}"


def test_every_variant_does_the_post_essentials() -> None:
    for variant in kickstart.VARIANTS:
        text = rendered(variant)
        assert "systemctl enable voxnode-agent.service voxnode-firstboot.service" in text
        assert ": > /etc/machine-id" in text
        assert "rootpw --lock" in text and "passwd -l root" in text
        assert 'VOXNODE_BUILD_ID="0.1.0-golden"' in text and "/usr/lib/os-release" in text
        assert "repo --name=voxnode --baseurl=file:///run/install/voxnode-media/voxnode" in text
        assert "part biosboot" in text or "%include /tmp/voxnode-part.ks" in text
    assert "poweroff" in rendered("disk") and "reboot --eject" in rendered("iso")
    assert "ena nvme" in rendered("aws") and "cloud-init" in rendered("aws")


@pytest.mark.parametrize("variant", kickstart.VARIANTS)
def test_every_variant_installs_what_the_pair_needs(variant: str) -> None:
    """The database (10.11 stream: semi-synchronous replication, init_rpl_role), its
    backup tool (full sync), rsync (file sync) and firewalld (the pair's ports)."""
    handler = makeVersion(RHEL8)
    parser = KickstartParser(handler, missingIncludeIsFatal=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser.readKickstartFromString(rendered(variant))
    packages = set(handler.packages.packageList)
    assert {"mariadb-server", "mariadb-backup", "rsync", "firewalld", "openssh-server"} <= (
        packages)
    assert [(m.name, m.stream) for m in handler.module.dataList()] == [("mariadb", "10.11")]
    assert "mariadb" in handler.services.enabled


def test_boot_iso_gets_network_repositories(tmp_path: Path) -> None:
    text = rendered("iso", base_url="https://repo.almalinux.org/almalinux/8/")
    assert "url --url=https://repo.almalinux.org/almalinux/8/BaseOS/x86_64/os/" in text
    assert "repo --name=AppStream --baseurl=https://repo.almalinux.org/almalinux/8/AppStream" \
        in text
    ks = tmp_path / "ks.cfg"
    ks.write_text(text)
    assert subprocess.run([str(KSVALIDATOR), "-v", "RHEL8", str(ks)], check=False,
                          capture_output=True).returncode == 0


def test_unknown_variant_is_a_clear_error() -> None:
    with pytest.raises(BuildError, match="unknown kickstart variant 'gcp'"):
        rendered("gcp")


# --- %pre disk chooser ---------------------------------------------------------------

GIB = 1024**3
FAKE_LSBLK = """#!/bin/sh
case "$*" in
  *-dnbo*) cat "$FAKE_LSBLK";;
  *PKNAME*) echo "$FAKE_PKNAME";;
esac
"""
FAKE_BLKID = '#!/bin/sh\n[ -n "$FAKE_MEDIUM" ] && echo "$FAKE_MEDIUM"\n'


def run_pre(tmp_path: Path, disks: list[tuple[str, int, int, str]], medium: str = "",
            cmdline: str = "BOOT_IMAGE=vmlinuz") -> tuple[int, str, str]:
    """Run pre-disk.sh with fake lsblk/blkid; (exit code, stderr, partitioning)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("lsblk", FAKE_LSBLK), ("blkid", FAKE_BLKID)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "lsblk.txt").write_text("".join(
        f"{n} disk {size} {rm} 0 {tran}\n" for n, size, rm, tran in disks))
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    script = (kickstart.KS_DIR / "pre-disk.sh").read_text().replace("@VOLID@", VOLID)
    part = tmp_path / "part.ks"
    part.unlink(missing_ok=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LSBLK": str(tmp_path / "lsblk.txt"),
           "FAKE_MEDIUM": f"/dev/{medium}" if medium else "", "FAKE_PKNAME": medium,
           "VOXNODE_PRE_TEST": "1", "VOXNODE_PART_KS": str(part),
           "VOXNODE_CMDLINE": str(tmp_path / "cmdline")}
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          check=False)
    return proc.returncode, proc.stderr, part.read_text() if part.exists() else ""


def validate_with(part: str, allowed: tuple[str, ...] = ()) -> None:
    """The iso kickstart with this partitioning instead of the %include, via pykickstart."""
    text = rendered("iso").replace("%include /tmp/voxnode-part.ks", part)
    parser = KickstartParser(makeVersion(RHEL8), followIncludes=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser.readKickstartFromString(text)
    unexpected = [str(w.message) for w in caught if str(w.message) not in allowed]
    assert not unexpected


USB_STICK = ("sdc", 16 * GIB, 1, "usb")


def test_single_disk_never_the_usb_install_medium(tmp_path: Path) -> None:
    code, err, part = run_pre(tmp_path, [("sda", 480 * GIB, 0, "sata"), USB_STICK],
                              medium="sdc")
    assert code == 0, err
    assert "ignoredisk --only-use=sda\n" in part and "sdc" not in part
    assert "part biosboot --fstype=biosboot --size=1 --ondisk=sda" in part
    assert "part /boot/efi --fstype=efi" in part and "part / --fstype=xfs" in part
    validate_with(part)


def test_medium_written_to_an_internal_disk_is_excluded(tmp_path: Path) -> None:
    code, err, part = run_pre(tmp_path, [("vda", 100 * GIB, 0, "-"),
                                         ("vdb", 100 * GIB, 0, "-")], medium="vdb")
    assert code == 0, err
    assert "--only-use=vda\n" in part


def test_two_matching_nvme_disks_make_raid1(tmp_path: Path) -> None:
    code, err, part = run_pre(tmp_path, [("nvme0n1", 512 * GIB, 0, "nvme"),
                                         ("nvme1n1", 512 * GIB, 0, "nvme"), USB_STICK],
                              medium="sdc")
    assert code == 0, err
    assert "--only-use=nvme0n1,nvme1n1" in part
    for mount in ("/boot/efi", "/boot", "/"):
        assert f"raid {mount} --level=RAID1" in part
    assert part.count("part biosboot") == 2  # either disk boots alone in BIOS mode
    # pykickstart warns about the second biosboot; it is deliberate
    validate_with(part, allowed=("A partition with the mountpoint biosboot has already "
                                 "been defined.",))


@pytest.mark.parametrize(("disks", "message"), [
    ([USB_STICK], "no internal disk of at least 20 GiB"),
    ([("sda", 480 * GIB, 0, "sata"), ("sdb", 960 * GIB, 0, "sata")],
     "two internal disks of different sizes (sda, sdb)"),
    ([("sda", 480 * GIB, 0, "sata"), ("sdb", 480 * GIB, 0, "sata"),
      ("sdd", 480 * GIB, 0, "sata")], "3 internal disks found"),
    ([("sda", 8 * GIB, 0, "sata"), ("mmcblk0", 64 * GIB, 1, "-")],
     "no internal disk of at least 20 GiB"),
])
def test_ambiguity_stops_the_install_with_a_message(
        tmp_path: Path, disks: list[tuple[str, int, int, str]], message: str) -> None:
    code, err, part = run_pre(tmp_path, disks)
    assert code == 1 and part == ""
    assert f"voxnode install stopped: {message}" in err


def test_boot_option_chooses_the_disks(tmp_path: Path) -> None:
    disks = [("sda", 480 * GIB, 0, "sata"), ("sdb", 960 * GIB, 0, "sata")]
    code, err, part = run_pre(tmp_path, disks, cmdline="quiet voxnode.disk=sdb")
    assert code == 0, err
    assert "--only-use=sdb\n" in part
