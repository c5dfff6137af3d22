"""The agent RPM and the appliance repository (``make rpm``).

Owns three steps:

1. **freeze**: PyInstaller makes one multi-call one-file binary (``image/frozen_entry.py``:
   ``voxnode``, ``voxnode-agent``, ``voxnode-firstboot``) with this ``.venv``'s Python
   (made from Debian's ``/usr/bin/python3``); staticx then bundles the loader and glibc so
   the result runs on AlmaLinux 8 (glibc 2.28). The build fails if the binary still asks
   the system for a glibc newer than 2.28. Cached under ``out/cache/`` by a hash of its
   inputs (``agent/``, ``ha/``, the entry point, ``pyproject.toml``).
2. **rpmbuild** of ``image/voxnode.spec.in``: the binary, ``image/overlay/`` (units,
   tmpfiles, preset — the same files the lab rootfs carries) and the default config.
3. **createrepo_c**: ``out/repo/`` is the appliance repository the ISO and kickstarts use.

Outputs: ``out/rpm/voxnode-<version>-<release>.el8.x86_64.rpm``, ``out/repo/``, and
``out/rpm.json``, the step's result (``image.artifacts.RpmBuild``: both, with their sha256)
that ``make iso`` reads.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from image.artifacts import Artifact, RpmBuild, write_result
from image.buildutil import (
    EXIT_CHECK,
    EXIT_MISSING_INPUT,
    EXIT_WRONG_INPUT,
    OUT,
    REPO,
    BuildError,
    guarded,
    need_tools,
    output_dir,
    run,
    say,
    source_date_epoch,
    step,
    tree_digest,
    version,
)

OVERLAY = REPO / "image" / "overlay"
# the replication's forced command: a script of the system's Python, not in the binary
SYNC_SHELL = REPO / "ha" / "replication" / "syncshell.py"
SPEC_IN = REPO / "image" / "voxnode.spec.in"
SYSCONFIG = REPO / "image" / "config" / "voxnode-agent.sysconfig"
ENTRY = REPO / "image" / "frozen_entry.py"
# this module is an input too: the PyInstaller options below shape the binary
FREEZE_INPUTS = (REPO / "agent", REPO / "ha", ENTRY, REPO / "pyproject.toml", Path(__file__))
# development-only modules the .venv has and the agent never imports at run time
EXCLUDED = ("_pytest", "pytest", "mypy", "ast_serialize", "pkg_resources", "setuptools",
            "pydoc_data", "tkinter", "testinfra", "pjsua2", "ruff")
MAX_GLIBC = (2, 28)  # AlmaLinux 8
RELEASE = "1"
# the frozen binary is cached outside out/ so test builds into temporary dirs reuse it
CACHE = Path(os.environ.get("VOXNODE_IMAGE_CACHE", "/var/cache/voxnode-image"))


def freeze(cache: Path) -> Path:
    """The staticx'd multi-call binary, built once per input hash."""
    key = tree_digest(list(FREEZE_INPUTS))
    final = cache / f"freeze-{key}" / "voxnode"
    if final.exists():
        say(f"==> frozen binary: cached ({final})")
        return final
    need_tools("patchelf", "objdump", "readelf")
    for old in cache.glob("freeze-*"):
        shutil.rmtree(old, ignore_errors=True)
    work = cache / f"freeze-{key}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with step("PyInstaller one-file multi-call binary"):
        run([sys.executable, "-m", "PyInstaller", "--onefile", "--noconfirm", "--clean",
             "--log-level", "WARN", "--name", "voxnode-dyn",
             "--distpath", work / "dist", "--workpath", work / "build",
             "--specpath", work, "--paths", REPO,
             "--collect-submodules", "agent", "--collect-submodules", "ha",
             "--collect-data", "agent", "--collect-submodules", "pyroute2",
             "--collect-submodules", "dbus_fast",
             *[arg for mod in EXCLUDED for arg in ("--exclude-module", mod)], ENTRY], cwd=REPO)
    with step("staticx: bundle the loader and glibc"):
        run([sys.executable, "-m", "staticx", work / "dist" / "voxnode-dyn",
             work / "voxnode"])
    check_glibc(work / "voxnode")
    smoke_test(work / "voxnode")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work / "voxnode", final)
    shutil.rmtree(work, ignore_errors=True)
    say(f"    binary: {final.stat().st_size / 1e6:.1f} MB")
    return final


def glibc_versions_needed(binary: Path) -> list[tuple[int, int]]:
    """GLIBC_x.y symbol versions the binary asks the system's libc for (none when static)."""
    text = run(["readelf", "-W", "--dyn-syms", "--version-info", binary])
    found = {(int(a), int(b)) for a, b in re.findall(r"GLIBC_(\d+)\.(\d+)", text)}
    return sorted(found)


def check_glibc(binary: Path) -> None:
    needed = glibc_versions_needed(binary)
    dynamic = "NEEDED" in run(["readelf", "-W", "-d", binary])
    too_new = [v for v in needed if v > MAX_GLIBC]
    if too_new:
        newest = ".".join(map(str, max(too_new)))
        raise BuildError(f"{binary.name} needs glibc {newest} but AlmaLinux 8 has 2.28 "
                         "(was staticx skipped?)", EXIT_CHECK)
    say(f"    glibc check: {'dynamic' if dynamic else 'static'} binary, "
        f"newest GLIBC version needed: {'.'.join(map(str, max(needed))) if needed else 'none'}")


def smoke_test(binary: Path) -> None:
    """Every command of the multi-call binary starts (all its imports resolve)."""
    for command in ("voxnode", "voxnode-agent", "voxnode-firstboot", "voxnode-arbiter"):
        proc = subprocess.run([binary, command, "--help"], capture_output=True, text=True,
                              timeout=120, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
            raise BuildError(f"the frozen binary fails to start {command}: "
                             f"{' '.join(last)}", EXIT_CHECK)
    say("    smoke test: voxnode, voxnode-agent, voxnode-firstboot, voxnode-arbiter start")


def overlay_tar(dest: Path, epoch: int) -> list[str]:
    """``image/overlay`` as a tar with fixed owners and times; its file list for %files."""
    files: list[str] = []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(OVERLAY.rglob("*")):
            rel = path.relative_to(OVERLAY).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = epoch
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
                files.append("/" + rel)
            else:
                tar.addfile(info)
    dest.write_bytes(buf.getvalue())
    return files


def vendor_key(path_text: str) -> bytes | None:
    """The vendor's licence-signing public key (PEM) for /etc/voxnode/vendor.pub, checked."""
    if not path_text:
        say("    note: no VENDOR_PUBKEY given: this RPM carries no /etc/voxnode/vendor.pub, "
            "so its nodes cannot verify licences")
        return None
    path = Path(path_text)
    if not path.is_file():
        raise BuildError(f"VENDOR_PUBKEY {path} does not exist", EXIT_MISSING_INPUT)
    data = path.read_bytes()
    try:
        serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BuildError(f"VENDOR_PUBKEY {path} is not a PEM public key (a private key "
                         "must never go into the image)", EXIT_WRONG_INPUT) from exc
    return data


def build_rpm(binary: Path, out: Path, build_id: str, epoch: int,
              vendor_pub: bytes | None = None) -> Path:
    need_tools("rpmbuild")
    top = out / "cache" / "rpmbuild"
    shutil.rmtree(top, ignore_errors=True)
    sources = top / "SOURCES"
    sources.mkdir(parents=True)
    shutil.copy2(binary, sources / "voxnode")
    shutil.copy2(SYSCONFIG, sources / "voxnode-agent.sysconfig")
    shutil.copy2(SYNC_SHELL, sources / "sync-shell")
    files = overlay_tar(sources / "overlay.tar", epoch)
    install_key = files_key = ""
    if vendor_pub is not None:
        (sources / "vendor.pub").write_bytes(vendor_pub)
        install_key = ("install -D -m 0644 %{_sourcedir}/vendor.pub "
                       "%{buildroot}/etc/voxnode/vendor.pub")
        files_key = "%attr(0644,root,root) /etc/voxnode/vendor.pub"
    spec = SPEC_IN.read_text()
    listing = "\n".join(f"%attr(0644,root,root) {f}" for f in files)
    for key, value in {"@VERSION@": version(), "@RELEASE@": RELEASE, "@BUILD_ID@": build_id,
                       "@OVERLAY_FILES@": listing, "@VENDOR_KEY_INSTALL@": install_key,
                       "@VENDOR_KEY_FILES@": files_key,
                       "@CHANGELOG_DATE@": time.strftime("%a %b %d %Y", time.gmtime(epoch))
                       }.items():
        spec = spec.replace(key, value)
    spec_path = top / "SPECS" / "voxnode.spec"
    spec_path.parent.mkdir(parents=True)
    spec_path.write_text(spec)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    with step("rpmbuild"):
        run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}",
             "--define", "_rpmdir %{_topdir}/RPMS", "--target", "x86_64-redhat-linux",
             spec_path], env=env)
    rpms = sorted((top / "RPMS").rglob("voxnode-*.rpm"))
    if not rpms:
        raise BuildError("rpmbuild produced no RPM")
    dest = out / "rpm"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    final = dest / rpms[-1].name
    shutil.copy2(rpms[-1], final)
    say(f"    {final.relative_to(REPO) if final.is_relative_to(REPO) else final} "
        f"({final.stat().st_size / 1e6:.1f} MB)")
    return final


def build_repo(rpm: Path, out: Path, epoch: int) -> Path:
    """The appliance repository: the RPM plus createrepo_c metadata (reproducible)."""
    need_tools("createrepo_c")
    repo = out / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "Packages").mkdir(parents=True)
    shutil.copy2(rpm, repo / "Packages" / rpm.name)
    os.utime(repo / "Packages" / rpm.name, (epoch, epoch))
    with step("createrepo_c (appliance repository)"):
        run(["createrepo_c", "--quiet", "--no-database", "--simple-md-filenames",
             "--revision", str(epoch), "--set-timestamp-to-revision", repo])
    return repo


def build(out: Path, build_id: str, epoch: int, vendor_pub: bytes | None = None) -> RpmBuild:
    """The whole step: the frozen binary (cached), the RPM and the repository."""
    binary = freeze(CACHE)
    rpm = build_rpm(binary, out, build_id, epoch, vendor_pub)
    repo = build_repo(rpm, out, epoch)
    return RpmBuild(rpm=Artifact.of(rpm), repo=repo,
                    repomd=Artifact.of(repo / "repodata" / "repomd.xml"), version=version(),
                    build_id=build_id)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m image.rpm", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--build-id", default=os.environ.get("BUILD_ID", ""))
    p.add_argument("--vendor-pubkey", default=os.environ.get("VENDOR_PUBKEY", ""),
                   help="PEM public key that verifies licences (env VENDOR_PUBKEY)")
    args = p.parse_args(argv)
    out = output_dir(args.out, "--out")
    vendor_pub = vendor_key(args.vendor_pubkey)
    epoch = source_date_epoch()
    build_id = args.build_id or f"{version()}-{time.strftime('%Y%m%d%H%M%S', time.gmtime(epoch))}"
    started = time.monotonic()
    result = build(out, build_id, epoch, vendor_pub)
    written = write_result(result, out / "rpm.json")
    say(f"rpm: {result.rpm.path} and repository {result.repo} in "
        f"{time.monotonic() - started:.1f} s (sha256 {result.rpm.sha256[:16]}…; {written})")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main)(None))
