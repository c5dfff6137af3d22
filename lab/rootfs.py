"""The lab rootfs: a Debian 12 system with systemd, the PBX stack and the voxnode agent.

Owns building and caching it. The rootfs is three overlayfs layers, each cached under a
hash of its inputs and built into a temporary directory that is renamed only when
complete (an interrupted build is never used):

1. ``base-<hash>``: ``mmdebstrap --variant=minbase bookworm`` with ``PACKAGES``, from the
   host's own Debian mirror, then the PBX engine's database made once with the packages'
   own schema (``PBX_DATABASE_SCRIPT``: MariaDB's ``kamailio`` database, its account and
   Kamailio's ``version`` and ``location`` tables from ``/usr/share/kamailio/mysql``), so
   every node boots with it. Key: the exact mmdebstrap command line and that script.
2. ``venv-<hash>``: ``/opt/voxnode/venv`` made by the rootfs's own python3, holding the
   agent's dependencies from PyPI. Key: base key + the dependency list of pyproject.toml.
3. ``agent-<hash>``: the node's wheel (agent/ and ha/, as the repository's pyproject.toml
   builds it: no lab/, image/ or license_server/) installed into that venv, the
   ``/usr/bin`` symlinks, ``image/overlay/`` (the unit and tmpfiles the AlmaLinux image
   carries too) and the unit policy (agent enabled; PBX units disabled, left for the
   agent's services subsystem), the PBX stack's lab settings (``pbx_settings``: Kamailio's
   registrations in the database, MariaDB reachable by the peer), and the lab vendor
   public key as ``/etc/voxnode/vendor.pub``. Key: venv key + the wheel's inputs
   (pyproject.toml, README.md, every file under agent/ and ha/), the overlay, this build
   script and that public key.

The lab vendor key pair (``lab_vendor_key``) is made once under the lab cache directory
(``vendor/lab-vendor.key``, 0600, and ``.pub``) and kept across builds: lab nodes verify
licences with its public half, and the lab's licence tests sign with its private half. It
is a lab key only; the appliance image gets the vendor's real public key from the image
build (``VENDOR_PUBKEY``), never from here.

Editing the agent therefore rebuilds only the small top layer. Nodes mount the three
layers read-only under their own writable upper directory. Only the newest layer of each
kind is kept (plus any a running lab still uses).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.util import (
    EXIT_FAILED,
    EXIT_REFUSED,
    REPO,
    LabError,
    Paths,
    locked,
    run,
    say,
    step,
    tail,
    umount,
)

SUITE = "bookworm"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "iproute2", "procps", "python3", "python3-venv",
    "kamailio", "kamailio-mysql-modules", "mariadb-server", "rsync", "coturn", "openvpn",
    "nginx-light", "less", "ca-certificates", "iputils-ping", "bash", "sudo",
    # sshd for the pair's sync daemon (voxnode-sync-sshd.service: the full sync's and the
    # file sync's transport), which a pair with a replicated database runs
    "openssh-server",
)
VENV = "/opt/voxnode/venv"
OVERLAY = REPO / "image" / "overlay"
# what the node's wheel is built from (its pyproject.toml packages agent/ and ha/ only)
WHEEL_INPUTS = ("pyproject.toml", "README.md", "agent", "ha")
# what the agent layer is made of: the wheel's inputs, the overlay and this build script
AGENT_LAYER_INPUTS = (*WHEEL_INPUTS, "image/overlay", "lab/rootfs.py")

AGENT_UNIT = "voxnode-agent.service"
# installed enabled by Debian; the agent's services subsystem starts them by licence/role
DISABLED_UNITS = (
    "kamailio.service", "mariadb.service", "mariadb.socket", "coturn.service",
    "openvpn.service", "nginx.service", "e2scrub_reap.service",
    # the system's sshd: nodes are entered with nsenter; the pair runs its own daemon
    "ssh.service", "ssh.socket",
)
# would fight the agent, need the outside world, or wait for console input in a container
MASKED_UNITS = (
    "systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service",
    "systemd-firstboot.service", "console-getty.service", "getty@tty1.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "fstrim.timer",
)
BUILD_MACHINE = "vxlab-build"
SYMLINKS = {"/usr/bin/voxnode": f"{VENV}/bin/voxnode",
            "/usr/bin/voxnode-agent": f"{VENV}/bin/voxnode-agent"}

# The PBX engine's database (Kamailio's usrloc), made in the base layer with the server
# the node runs and the schema files kamailio-mysql-modules ships. The account and its
# password are Kamailio's documented defaults (the DBURL Debian's kamailio.cfg falls back
# to); the server answers it on its unix socket only (the account is @localhost).
KAMAILIO_DB = "kamailio"
KAMAILIO_DB_USER = "kamailio"
KAMAILIO_DB_PASSWORD = "kamailiorw"
KAMAILIO_SCHEMA = "/usr/share/kamailio/mysql"
KAMAILIO_TABLES = ("standard", "usrloc")  # version; location, location_attrs
PBX_DATABASE_SCRIPT = f"""set -e
install -d -o mysql -g mysql -m 0755 /run/mysqld
/usr/sbin/mariadbd --user=mysql --skip-networking --skip-log-bin &
server=$!
i=0
until mariadb-admin ping >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 300 ] || {{ echo "mariadbd did not start" >&2; exit 1; }}
  kill -0 $server; sleep 0.1
done
mariadb <<SQL
CREATE DATABASE {KAMAILIO_DB};
CREATE USER '{KAMAILIO_DB_USER}'@'localhost' IDENTIFIED BY '{KAMAILIO_DB_PASSWORD}';
GRANT ALL PRIVILEGES ON {KAMAILIO_DB}.* TO '{KAMAILIO_DB_USER}'@'localhost';
SQL
for table in {" ".join(KAMAILIO_TABLES)}; do
  mariadb {KAMAILIO_DB} < {KAMAILIO_SCHEMA}/$table-create.sql
done
mariadb -N -e "SELECT table_name, table_version FROM {KAMAILIO_DB}.version ORDER BY id"
mariadb-admin shutdown
wait $server
"""

# Kamailio's configuration in the lab: Debian's kamailio.cfg reads kamailio-local.cfg
# (``import_file``, none by default: registrations in memory). ``USRLOC_DB`` holds the
# defines that keep them in the database instead, written through at every REGISTER
# before it is answered (usrloc db_mode 1, the value of USRLOC_DB_MODE; Debian's file has
# write-back, db_mode 2, fixed, which ``pbx_settings`` makes that define). The appliance
# (``lab.appliance``) links kamailio-local.cfg to it on the licensed pair's nodes, which
# run the database; a bare node's database is licence-bound and does not run.
KAMAILIO_CFG = "etc/kamailio/kamailio.cfg"
KAMAILIO_LOCAL_CFG = "/etc/kamailio/kamailio-local.cfg"
USRLOC_DB = "/etc/kamailio/usrloc-db.cfg"
USRLOC_DB_MODE_FIXED = 'modparam("usrloc", "db_mode", 2)'
USRLOC_DB_MODE_DEFINED = 'modparam("usrloc", "db_mode", USRLOC_DB_MODE)'
USRLOC_DB_TEXT = f"""\
# Written by the lab rootfs build (lab/rootfs.py); kamailio-local.cfg links here on the
# appliance's nodes. Registrations live in the node's MariaDB ({KAMAILIO_DB}.location,
# the default DBURL), each REGISTER written through before it is answered (db_mode 1),
# so a slave whose database replicates the master's knows every phone when it takes over.
#!define WITH_MYSQL
#!define WITH_USRLOCDB
#!define USRLOC_DB_MODE 1
"""
# Debian's server listens on the loopback only; the peer's replica connects to the
# management address (AlmaLinux 8's server, on the appliance, listens on every address).
MARIADB_LAB_CNF = "etc/mysql/mariadb.conf.d/60-voxnode-lab.cnf"
MARIADB_LAB_TEXT = """\
# Written by the lab rootfs build (lab/rootfs.py): the pair's replica connects to the
# node's management address, as on the appliance, whose server listens on every address.
[mariadb]
bind-address = 0.0.0.0
"""
# The pair's database TLS files (the agent's, ha/replication/database.py) live here; the
# server, which runs as mysql, reads its key (group mysql) through this directory. Made
# by the image so that the agent, which would create it under its unit's UMask=0027 as
# root:root 0750, finds it ready: mysql could not enter that one, and the server would
# refuse to start with the pair's TLS settings.
TLS_DIR = "etc/voxnode/tls"


@dataclass(frozen=True)
class Rootfs:
    """A built rootfs: its layers, lowest first, and the key of the top one."""

    layers: tuple[Path, ...]
    key: str

    @property
    def lowerdir(self) -> str:
        """The overlayfs ``lowerdir=`` value (top layer first)."""
        return ":".join(str(p) for p in reversed(self.layers))


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


# --- keys -----------------------------------------------------------------------------------


def host_mirrors() -> list[str]:
    """The host's Debian apt sources for SUITE as one-line ``deb`` entries (offline mirror)."""
    entries: list[str] = []
    files = [Path("/etc/apt/sources.list"),
             *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
             *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        entries.append(f"deb {uri} {suite} {fields.get('components', 'main')}")
        else:
            for line in text.splitlines():
                line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).strip()
                if line.startswith("deb "):
                    entries.append(" ".join(line.split()))
    ours = [e for e in entries if e.split()[2].startswith(SUITE)]
    return ours or [f"deb http://deb.debian.org/debian {SUITE} main"]


def base_command(target: Path) -> list[str]:
    return [
        "mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
        # the build copies the host's resolv.conf and hostname in; the lab sets its own
        '--customize-hook=rm -f "$1/etc/resolv.conf" "$1/etc/hostname"',
        '--customize-hook=truncate -s 0 "$1/etc/machine-id"',
        SUITE, str(target), *host_mirrors(),
    ]


def dependencies() -> list[str]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        project = tomllib.load(fh)["project"]
    return sorted(project.get("dependencies", []))


def _input_files() -> list[Path]:
    files: list[Path] = []
    for name in AGENT_LAYER_INPUTS:
        path = REPO / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(
                p for p in path.rglob("*")
                if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts
                and p.suffix not in (".pyc", ".pyo")
            )
    return sorted(files)


def lab_vendor_key(paths: Paths) -> tuple[Path, Path]:
    """The lab vendor key pair (private, public), made on first use (see the docstring)."""
    from agent.licence.document import new_private_key, private_key_pem, public_key_pem

    private = paths.cache / "vendor" / "lab-vendor.key"
    public = private.with_name("lab-vendor.pub")
    if private.is_file() and public.is_file():
        return private, public
    private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = new_private_key()
    for path, data, mode in ((private, private_key_pem(key), 0o600),
                             (public, public_key_pem(key.public_key()), 0o644)):
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return private, public


def _lab_vendor_pub(paths: Paths) -> bytes:
    try:
        return (paths.cache / "vendor" / "lab-vendor.pub").read_bytes()
    except OSError:
        return b""


def keys(paths: Paths | None = None) -> dict[str, str]:
    """The cache keys of the three layers, computed from their inputs (cheap)."""
    base = _digest("base", *base_command(Path("TARGET")), PBX_DATABASE_SCRIPT)
    venv = _digest("venv", base, VENV, *dependencies())
    parts: list[str | bytes] = ["agent", venv, _lab_vendor_pub(paths or Paths.default())]
    for path in _input_files():
        parts.append(str(path.relative_to(REPO)))
        parts.append(os.readlink(path) if path.is_symlink() else path.read_bytes())
    return {"base": base, "venv": venv, "agent": _digest(*parts)}


# --- building -------------------------------------------------------------------------------


def _nspawn_run(root: Path, command: Sequence[str], log: Path, binds: Iterable[str] = ()) -> None:
    """Run a command inside ``root`` (not booted, no network: inputs come bind-mounted)."""
    try:
        run(
            ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe",
             f"--machine={BUILD_MACHINE}", "--private-network", "--resolv-conf=off",
             "--timezone=off", "--link-journal=no", "--setenv=PIP_NO_CACHE_DIR=1",
             "--setenv=PIP_DISABLE_PIP_VERSION_CHECK=1",
             *(f"--bind-ro={b}" for b in binds), "-D", root, *command],
            log=log,
        )
    finally:
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{BUILD_MACHINE}", ignore_errors=True)


def host_wheels(paths: Paths, requirements: Sequence[str], into: Path) -> None:
    """Wheels for ``requirements`` made by the host's pip (same Debian 12 / CPython 3.11 as
    the rootfs), so the container installs offline and the host's pip configuration
    (index, proxy, certificates) is the only one that matters."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "-w", into, *requirements],
        log=paths.build_log)


class _LayerBuild:
    """An overlay (given lower layers + a fresh upper) mounted for building one layer."""

    def __init__(self, lowers: Sequence[Path], tmp: Path) -> None:
        self.lowers = lowers
        self.tmp = tmp
        self.upper = tmp / "root"
        self.work = tmp / "work"
        self.merged = tmp / "merged"

    def __enter__(self) -> _LayerBuild:
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True)
        lower = ":".join(str(p) for p in reversed(self.lowers))
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={self.upper},workdir={self.work}", self.merged])
        return self

    def __exit__(self, *exc: object) -> None:
        umount(self.merged)

    def finish(self, final: Path) -> None:
        """Drop what the build leaves behind and publish the layer atomically."""
        umount(self.merged)
        for leftover in ("mnt/wheels",):
            path = self.upper / leftover
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            elif path.exists() or path.is_symlink():
                path.unlink()
        shutil.rmtree(self.work)
        self.merged.rmdir()
        os.rename(self.tmp, final)


def _fresh(tmp: Path) -> None:
    if tmp.exists():
        for sub in ("merged",):
            umount(tmp / sub)
        shutil.rmtree(tmp)


def _build_base(paths: Paths, key: str) -> Path:
    final = paths.layers / f"base-{key}"
    tmp = paths.layers / f"base-{key}.tmp"
    _fresh(tmp)
    tmp.mkdir(parents=True)
    with step(f"mmdebstrap {SUITE} with {len(PACKAGES)} packages (base layer)"):
        cmd = base_command(tmp / "root")
        with paths.build_log.open("a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if line.startswith("I: ") and "success" not in line:
                    say(f"    {line[3:].rstrip()}")
            if proc.wait() != 0:
                raise LabError("mmdebstrap failed", EXIT_FAILED, detail=_tail_log(paths))
    with step(f"the PBX engine's database ({KAMAILIO_DB}: "
              f"{', '.join(KAMAILIO_TABLES)} tables of kamailio-mysql-modules)"):
        _nspawn_run(tmp / "root", ["/bin/sh", "-c", PBX_DATABASE_SCRIPT], paths.build_log)
    os.rename(tmp, final)
    return final


def _build_venv(paths: Paths, key: str, base: Path) -> Path:
    final = paths.layers / f"venv-{key}"
    tmp = paths.layers / f"venv-{key}.tmp"
    _fresh(tmp)
    with step(f"agent dependencies into {VENV} (venv layer)"):
        wheels = paths.cache / "deps"
        host_wheels(paths, dependencies(), wheels)
        with _LayerBuild([base / "root"], tmp) as build:
            script = (f"set -e; python3 -m venv {VENV}; {VENV}/bin/pip install -q --no-index "
                      f"--find-links /mnt/wheels {' '.join(repr(d) for d in dependencies())}")
            _nspawn_run(build.merged, ["/bin/sh", "-c", script], paths.build_log,
                        binds=[f"{wheels}:/mnt/wheels"])
            build.finish(final)
        shutil.rmtree(wheels, ignore_errors=True)
    return final


def build_wheel(paths: Paths) -> Path:
    """Build the voxnode wheel from a clean copy of its inputs (never walks out/ or .venv)."""
    work = paths.cache / "wheel"
    shutil.rmtree(work, ignore_errors=True)
    src, dist = work / "src", work / "dist"
    src.mkdir(parents=True)
    for name in WHEEL_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, src / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, src],
        log=paths.build_log)
    shutil.rmtree(src)
    wheels = sorted(dist.glob("voxnode-*.whl"))
    if not wheels:
        raise LabError("pip wheel produced no voxnode wheel", EXIT_FAILED)
    return dist


def _build_agent(paths: Paths, key: str, lowers: list[Path], vendor_pub: Path) -> Path:
    final = paths.layers / f"agent-{key}"
    tmp = paths.layers / f"agent-{key}.tmp"
    _fresh(tmp)
    with step("voxnode wheel, overlay and unit policy (agent layer)"):
        dist = build_wheel(paths)
        with _LayerBuild(lowers, tmp) as build:
            root = build.merged
            wheel = sorted(dist.glob("voxnode-*.whl"))[-1].name
            _nspawn_run(
                root,
                ["/bin/sh", "-c",
                 f"set -e; {VENV}/bin/pip install -q --no-deps --no-index /mnt/wheels/{wheel}; "
                 f"{VENV}/bin/pip check"],
                paths.build_log, binds=[f"{dist}:/mnt/wheels"],
            )
            for link, target in SYMLINKS.items():
                dest = root / link.lstrip("/")
                if dest.is_symlink() or dest.exists():
                    dest.unlink()
                dest.symlink_to(target)
            run(["cp", "-a", "--no-preserve=ownership", f"{OVERLAY}/.", root])
            systemctl = ["systemctl", f"--root={root}", "--quiet"]
            run([*systemctl, "enable", AGENT_UNIT], log=paths.build_log)
            present = [u for u in DISABLED_UNITS if _unit_exists(root, u)]
            if present:
                run([*systemctl, "disable", *present], log=paths.build_log)
            run([*systemctl, "mask", *MASKED_UNITS], log=paths.build_log)
            # lab nodes run Kamailio as the PBX engine: the lab service catalogue
            dropin = root / "etc/systemd/system/voxnode-agent.service.d"
            dropin.mkdir(parents=True, exist_ok=True)
            (dropin / "lab.conf").write_text(
                "[Service]\nEnvironment=VOXNODE_CATALOGUE=lab\n")
            pbx_settings(root)
            (root / "etc/voxnode").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(vendor_pub, root / "etc/voxnode/vendor.pub")
            os.chmod(root / "etc/voxnode/vendor.pub", 0o644)
            (root / "etc/voxnode/lab-rootfs.json").write_text(
                json.dumps({"agent_layer": key, "packages": list(PACKAGES)}, indent=2) + "\n")
            build.finish(final)
    return final


def pbx_settings(root: Path) -> None:
    """The PBX stack's lab settings in ``root`` (see ``USRLOC_DB``, ``MARIADB_LAB_CNF`` and
    ``TLS_DIR``): Kamailio's usrloc database mode as the define ``USRLOC_DB_MODE``, the
    defines that turn it on, MariaDB listening on the management address, and the TLS
    directory its server can enter."""
    cfg = root / KAMAILIO_CFG
    text = cfg.read_text()
    if text.count(USRLOC_DB_MODE_FIXED) != 1:
        raise LabError(f"{cfg}: expected Debian's `{USRLOC_DB_MODE_FIXED}` once (the lab "
                       "makes it a define); the kamailio package changed", EXIT_FAILED)
    cfg.write_text(text.replace(USRLOC_DB_MODE_FIXED, USRLOC_DB_MODE_DEFINED))
    (root / USRLOC_DB.lstrip("/")).write_text(USRLOC_DB_TEXT)
    (root / MARIADB_LAB_CNF).write_text(MARIADB_LAB_TEXT)
    tls = root / TLS_DIR
    tls.mkdir(parents=True, exist_ok=True)
    os.chown(tls, 0, _group_id(root, "mysql"))
    os.chmod(tls, 0o750)


def _group_id(root: Path, name: str) -> int:
    """A group's id in the rootfs's own /etc/group (not the host's)."""
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name:
            return int(fields[2])
    raise LabError(f"the rootfs has no group {name!r}", EXIT_FAILED)


def _unit_exists(root: Path, unit: str) -> bool:
    return any((root / d / unit).exists() for d in ("lib/systemd/system", "usr/lib/systemd/system",
                                                    "etc/systemd/system"))


def _tail_log(paths: Paths) -> str:
    return tail(paths.build_log, 25)


def _in_use(layer: Path) -> bool:
    """Whether a mounted overlay (a running node, a build) uses ``layer``."""
    try:
        return str(layer) in Path("/proc/self/mountinfo").read_text()
    except OSError:
        return True


def _prune(paths: Paths, current: dict[str, Path]) -> None:
    """Keep only the newest layer of each kind, plus those a mounted overlay still uses."""
    for kind, keep in current.items():
        for old in paths.layers.glob(f"{kind}-*"):
            if old == keep or _in_use(old):
                continue
            shutil.rmtree(old, ignore_errors=True)


def ensure(paths: Paths) -> Rootfs:
    """Return the lab rootfs for the current sources, building the layers that are missing."""
    if "overlay" not in Path("/proc/filesystems").read_text():
        run(["modprobe", "overlay"], check=False)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise LabError("the kernel has no overlayfs (needed for the lab's node roots)",
                           code=EXIT_REFUSED)
    paths.layers.mkdir(parents=True, exist_ok=True)
    paths.out.mkdir(parents=True, exist_ok=True)
    with locked(paths.cache / "lock"):
        return _ensure(paths)


def _ensure(paths: Paths) -> Rootfs:
    _, vendor_pub = lab_vendor_key(paths)
    k = keys(paths)
    base = paths.layers / f"base-{k['base']}"
    venv = paths.layers / f"venv-{k['venv']}"
    agent = paths.layers / f"agent-{k['agent']}"
    if agent.is_dir() and venv.is_dir() and base.is_dir():
        say(f"==> rootfs {k['agent']} is cached ({agent.parent})")
    else:
        say(f"==> building the lab rootfs {k['agent']} (log: {paths.build_log})")
        paths.build_log.write_text("")
        if not base.is_dir():
            _build_base(paths, k["base"])
        if not venv.is_dir():
            _build_venv(paths, k["venv"], base)
        if not agent.is_dir():
            _build_agent(paths, k["agent"], [base / "root", venv / "root"], vendor_pub)
    _prune(paths, {"base": base, "venv": venv, "agent": agent})
    return Rootfs(layers=(base / "root", venv / "root", agent / "root"), key=k["agent"])


if __name__ == "__main__":  # build (or confirm the cache) without starting anything
    try:
        print(ensure(Paths.default()).lowerdir)
    except LabError as exc:
        print(f"lab.rootfs: error: {exc.message}", file=sys.stderr)
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        sys.exit(exc.code)
