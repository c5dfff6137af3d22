"""The agent RPM: contents (and none of the development tools: no lab/, image/ or
license_server/ file or module), requirements (nothing on the build host's glibc),
scripts and config flags; the frozen binary is static and runs in an empty chroot; the
appliance repository lists it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from PyInstaller.archive.readers import CArchiveReader

from image import rpm as rpm_build
from image.buildutil import EXIT_CHECK, EXIT_MISSING_INPUT, EXIT_WRONG_INPUT, BuildError
from tests.image.conftest import Build

OVERLAY = Path(__file__).resolve().parents[2] / "image" / "overlay"


def rpmq(*args: str) -> str:
    return subprocess.run(["rpm", *args], capture_output=True, text=True, check=True).stdout


def test_contents(build: Build) -> None:
    files = set(rpmq("-qlp", str(build.rpm)).split())
    assert {"/usr/libexec/voxnode/voxnode", "/usr/libexec/voxnode/sync-shell",
            "/usr/bin/voxnode", "/usr/bin/voxnode-agent",
            "/usr/bin/voxnode-firstboot", "/usr/bin/voxnode-arbiter",
            "/etc/sysconfig/voxnode-agent",
            "/etc/voxnode/vendor.pub",
            "/var/lib/voxnode", "/etc/voxnode/secrets"} <= files
    # the overlay shared with the lab rootfs, all of it
    overlay = {"/" + p.relative_to(OVERLAY).as_posix() for p in OVERLAY.rglob("*") if p.is_file()}
    assert "/usr/lib/systemd/system/voxnode-firstboot.service" in overlay
    assert overlay <= files


def test_requirements_have_no_build_host_glibc(build: Build) -> None:
    requires = rpmq("-qRp", str(build.rpm))
    assert "GLIBC" not in requires and "libc.so" not in requires
    # no Python but the system's own, for the replication's forced command
    assert [r for r in requires.split() if "python" in r] == ["/usr/libexec/platform-python"]
    assert {"systemd", "cloud-utils-growpart", "xfsprogs", "mariadb-server", "mariadb-backup",
            "rsync", "firewalld", "openssh-server"} <= set(requires.split())
    assert "PayloadIsZstd" not in requires  # AlmaLinux 8's rpm reads xz


def test_config_scripts_and_modes(build: Build) -> None:
    flags = rpmq("-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILENAMES}\n]",
                 str(build.rpm))
    assert "cn -rw-r--r-- /etc/sysconfig/voxnode-agent" in flags  # %config(noreplace)
    assert " drwx------ /etc/voxnode/secrets" in flags
    assert " drwxr-x--- /var/lib/voxnode" in flags
    scripts = rpmq("-qp", "--scripts", str(build.rpm))
    assert "preset voxnode-agent.service voxnode-firstboot.service" in scripts
    assert "systemd-tmpfiles --create" in scripts
    assert rpmq("-qp", "--qf", "%{RELEASE}", str(build.rpm)).endswith(".el8")


def test_appliance_repository(build: Build) -> None:
    repo = build.out / "repo"
    assert (repo / "repodata" / "repomd.xml").exists()
    assert list((repo / "Packages").glob("voxnode-*.rpm"))


@pytest.fixture(scope="module")
def binary(build: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The binary out of the RPM payload (rpm2cpio | cpio)."""
    dest = tmp_path_factory.mktemp("payload")
    subprocess.run(f"rpm2cpio {build.rpm} | cpio -idm --quiet", shell=True, cwd=dest,
                   check=True)
    return dest / "usr/libexec/voxnode/voxnode"


DEVELOPMENT_TOOLS = ("lab", "image", "license_server")


def frozen_modules(binary: Path, work: Path) -> set[str]:
    """The Python modules frozen into the binary: staticx's archive unpacked
    (``sx-extract``), then the table of contents of the PyInstaller program's PYZ."""
    subprocess.run([str(Path(sys.executable).parent / "sx-extract"), str(binary), str(work)],
                   check=True, capture_output=True)
    program = work / os.readlink(work / ".staticx.prog")
    return set(CArchiveReader(str(program)).open_embedded_archive("PYZ.pyz").toc)


def test_no_development_tools_in_the_rpm(build: Build, binary: Path, tmp_path: Path) -> None:
    """The lab and the vendor's licence server are not part of a node: no file of the RPM
    comes from lab/ or license_server/, and the binary freezes no module of theirs (nor of
    the image builders: the frozen entry is a script, not the image package)."""
    files = rpmq("-qlp", str(build.rpm)).split()
    tools = [f for f in files if any(part in DEVELOPMENT_TOOLS for part in f.split("/"))
             or f.rsplit("/", 1)[-1] in ("voxnode-lab", "voxnode-license-server")]
    assert tools == [], tools
    modules = frozen_modules(binary, tmp_path / "extracted")
    assert {"agent.cli.main", "agent.daemon", "agent.firstboot", "ha.arbiter"} <= modules
    frozen_tools = sorted(m for m in modules if m.split(".")[0] in DEVELOPMENT_TOOLS)
    assert frozen_tools == [], frozen_tools


def test_binary_needs_no_system_glibc(binary: Path) -> None:
    assert rpm_build.glibc_versions_needed(binary) == []
    dynamic = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True,
                             check=False).stdout
    assert "NEEDED" not in dynamic


def test_glibc_check_rejects_a_dynamic_binary() -> None:
    with pytest.raises(BuildError) as err:
        rpm_build.check_glibc(Path("/usr/bin/python3"))  # Debian 12: GLIBC_2.34+
    assert err.value.code == EXIT_CHECK and "AlmaLinux 8 has 2.28" in err.value.message


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_binary_runs_in_an_empty_chroot(binary: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("proc", "tmp", "bin", "node"):
        (root / d).mkdir(parents=True)
    shutil.copy2(binary, root / "bin/voxnode")
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        def chrooted(*cmd: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([chroot, str(root), *cmd], capture_output=True, text=True,
                                  timeout=120, check=False, env={"PATH": "/bin"})

        started = time.monotonic()
        cli = chrooted("/bin/voxnode", "voxnode", "--help")
        elapsed = time.monotonic() - started
        assert cli.returncode == 0 and "voxnode" in cli.stdout, cli.stderr
        assert elapsed < 15, f"--help took {elapsed:.1f} s"
        agent = chrooted("/bin/voxnode", "voxnode-agent", "--help")
        assert agent.returncode == 0 and "--state-dir" in agent.stdout, agent.stderr
        # a whole first boot of the tmp root "/node", from inside the chroot
        first = chrooted("/bin/voxnode", "voxnode-firstboot", "--root", "/node",
                         "--platform", "generic", "--console", "-")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "first boot done" in first.stdout
        assert (root / "node/etc/voxnode/tls/node.crt").exists()
        assert (root / "node/var/lib/voxnode/firstboot.done").exists()
    finally:
        subprocess.run(["umount", str(root / "proc")], check=False)


def test_vendor_key_must_be_a_public_key(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    priv = tmp_path / "vendor.key"
    priv.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    with pytest.raises(BuildError, match="not a PEM public key") as err:
        rpm_build.vendor_key(str(priv))
    assert err.value.code == EXIT_WRONG_INPUT
    with pytest.raises(BuildError) as missing:
        rpm_build.vendor_key(str(tmp_path / "nope.pub"))
    assert missing.value.code == EXIT_MISSING_INPUT
    assert rpm_build.vendor_key("") is None


def test_command_wrappers_run_the_binary(build: Build, binary: Path) -> None:
    """/usr/bin/voxnode* are sh wrappers that pass the command name (see the spec)."""
    root = binary.parents[3]
    for name in ("voxnode", "voxnode-agent", "voxnode-firstboot"):
        wrapper = root / "usr/bin" / name
        text = wrapper.read_text()
        assert text == f'#!/bin/sh\nexec /usr/libexec/voxnode/voxnode {name} "$@"\n'
        proc = subprocess.run([str(binary), name, "--help"], capture_output=True, text=True,
                              check=False, timeout=60)
        assert proc.returncode == 0 and name in proc.stdout, proc.stderr
