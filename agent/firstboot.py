"""First boot of an installed or preloaded node (``voxnode-firstboot.service``, runs once).

Owns what makes one unit of the image unique and usable, in this order:

1. a machine-id of its own (the image ships an empty ``/etc/machine-id``);
2. new SSH host keys (only when sshd is installed);
3. a self-signed TLS certificate and key for the node (``agent.paths.NODE_TLS_*``);
4. the root file system grown to the size of its disk (skipped, with a log line, when the
   root is not a disk partition — a container, a tmp root in tests);
5. the initial password of the web ``admin`` user: on AWS the EC2 instance ID read through
   IMDSv2, elsewhere a generated one shown on the console only; a change is forced at the
   first login. Only a scrypt hash is kept in the state; the password is never logged;
6. the console banner (``/etc/issue.d/voxnode.issue``) with the node's address.

Every step runs even if an earlier one failed; the done-stamp is written only when all
succeeded, so a failed first boot is retried at the next boot. Exit: 0 done (or already
done), 2 usage, 3 the root is not usable, 4 a step failed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.paths import NODE_TLS_CERT, NODE_TLS_KEY

log = logging.getLogger("voxnode.firstboot")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BAD_ROOT = 3
EXIT_STEP_FAILED = 4

DONE_STAMP = "/var/lib/voxnode/firstboot.done"
ADMIN_STATE = "/etc/voxnode/secrets/admin.json"
INITIAL_PASSWORD = "/etc/voxnode/secrets/initial-admin-password"
ISSUE_FILE = "/etc/issue.d/voxnode.issue"
MACHINE_ID = "/etc/machine-id"
DBUS_MACHINE_ID = "/var/lib/dbus/machine-id"
IMDS_URL = "http://169.254.169.254"
SSH_KEY_TYPES = ("rsa", "ecdsa", "ed25519")
_MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_INSTANCE_ID_RE = re.compile(r"^i-[0-9a-f]{8,17}$")


class StepError(Exception):
    """A first-boot step failed; the message says what and what to do."""


@dataclass
class Context:
    """Where and how the first boot runs; everything a test needs to redirect."""

    root: Path
    platform: str  # "auto" | "aws" | "generic"
    metadata_url: str = IMDS_URL
    metadata_timeout_s: float = 60.0
    console: Path | None = Path("/dev/console")
    force: bool = False
    done: list[str] = field(default_factory=list)

    def path(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")

    @property
    def live(self) -> bool:
        """True when the root is the running system (kernel-level steps apply)."""
        return self.root.resolve() == Path("/")


def _write(path: Path, data: str | bytes, mode: int) -> None:
    """Atomic write with ``mode``; falls back to in-place when the target is a bind mount."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    try:
        os.replace(tmp, path)
    except OSError:  # EBUSY: e.g. /etc/machine-id bind-mounted by a container manager
        tmp.unlink()
        with open(path, "wb") as out:
            out.write(raw)


# --- 1. machine-id -------------------------------------------------------------------


def step_machine_id(ctx: Context) -> str:
    path = ctx.path(MACHINE_ID)
    current = path.read_text().strip() if path.exists() else ""
    if _MACHINE_ID_RE.match(current) and not ctx.force:
        return "machine-id: kept (systemd created it from the image's empty file)"
    new = uuid.uuid4().hex
    _write(path, new + "\n", 0o444)
    dbus = ctx.path(DBUS_MACHINE_ID)
    if dbus.exists() and not dbus.is_symlink():
        _write(dbus, new + "\n", 0o444)
    return f"machine-id: new {new}"


# --- 2. SSH host keys ----------------------------------------------------------------


def step_ssh_host_keys(ctx: Context) -> str:
    sshd = [ctx.path(p) for p in ("/usr/sbin/sshd", "/usr/bin/sshd")]
    keygen = shutil.which("ssh-keygen")
    if not any(p.exists() for p in sshd):
        return "ssh host keys: skipped (sshd is not installed)"
    if keygen is None:
        raise StepError("ssh host keys: ssh-keygen not found (install openssh)")
    ssh_dir = ctx.path("/etc/ssh")
    ssh_dir.mkdir(parents=True, exist_ok=True)
    for old in ssh_dir.glob("ssh_host_*_key*"):
        old.unlink()
    for kind in SSH_KEY_TYPES:
        key = ssh_dir / f"ssh_host_{kind}_key"
        proc = subprocess.run([keygen, "-q", "-t", kind, "-N", "", "-C", "", "-f", str(key)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise StepError(f"ssh host keys: ssh-keygen -t {kind} failed: {proc.stderr.strip()}")
        os.chmod(key, 0o600)
    return f"ssh host keys: new {', '.join(SSH_KEY_TYPES)}"


# --- 3. TLS certificate --------------------------------------------------------------


def node_addresses() -> list[str]:
    """Non-loopback IP addresses of this host (best effort, no external traffic)."""
    found: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    except OSError:
        pass
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # connect() on UDP only picks the source address; no packet is sent
        probe.connect(("192.0.2.1", 9))
        found.add(probe.getsockname()[0])
    except OSError:
        pass
    finally:
        probe.close()
    return sorted(a for a in found if not ipaddress.ip_address(a.split("%")[0]).is_loopback)


def self_signed(hostname: str, addresses: Sequence[str], now: datetime) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): ECDSA P-256, 10 years, SAN = host name + addresses."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "voxnode appliance")])
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)]
    alt += [x509.IPAddress(ipaddress.ip_address(a.split("%")[0])) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def step_tls(ctx: Context) -> str:
    hostname = socket.gethostname() if ctx.live else "localhost"
    addresses = node_addresses() if ctx.live else []
    cert, key = self_signed(hostname, addresses, datetime.now(UTC))
    _write(ctx.path(NODE_TLS_KEY), key, 0o600)
    _write(ctx.path(NODE_TLS_CERT), cert, 0o644)
    return f"tls: new self-signed certificate for {hostname} ({len(addresses)} addresses)"


# --- 4. grow the root file system ----------------------------------------------------


def root_source(mountinfo: str) -> tuple[str, str]:
    """(device, fstype) mounted at / according to a /proc/self/mountinfo text."""
    result = ("", "")
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and fields[4] == "/":
            rest = right.split()
            if len(rest) >= 2:
                result = (rest[1], rest[0])  # the last mount on / wins
    return result


def partition_of(device: str, sys_block: Path) -> tuple[str, int] | None:
    """(parent disk device, partition number) of a partition like /dev/sda2 or
    /dev/nvme0n1p3, read from sysfs; None when ``device`` is not a disk partition."""
    if not device.startswith("/dev/"):
        return None
    name = Path(os.path.realpath(device)).name if Path(device).exists() else Path(device).name
    entry = sys_block / name
    number = entry / "partition"
    if not number.exists():
        return None
    parent = Path(os.path.realpath(entry)).parent.name
    return f"/dev/{parent}", int(number.read_text().strip())


def step_grow_root(ctx: Context, run: Callable[[list[str]], None] | None = None) -> str:
    if not ctx.live:
        return f"grow root: skipped (root {ctx.root} is not the running system)"
    device, fstype = root_source(Path("/proc/self/mountinfo").read_text())
    part = partition_of(device, Path("/sys/class/block"))
    if part is None:
        return f"grow root: skipped (/ is {device or '?'} ({fstype}), not a disk partition)"
    disk, number = part
    execute = run or _run_checked
    if shutil.which("growpart") is None:
        raise StepError("grow root: growpart not found (install cloud-utils-growpart)")
    proc = subprocess.run(["growpart", disk, str(number)], capture_output=True, text=True,
                          check=False)
    # growpart exits 1 with NOCHANGE when the partition already fills the disk
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and "NOCHANGE" not in proc.stdout):
        raise StepError(f"grow root: growpart {disk} {number} failed: "
                        f"{(proc.stderr or proc.stdout).strip()}")
    if fstype == "xfs":
        execute(["xfs_growfs", "/"])
    elif fstype.startswith("ext"):
        execute(["resize2fs", device])
    else:
        return f"grow root: partition grown; {fstype} is not resized automatically"
    return f"grow root: {device} ({fstype}) grown to the end of {disk}"


def _run_checked(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StepError(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()}")


# --- 5. initial admin password -------------------------------------------------------


def is_aws(root: Path) -> bool:
    """EC2 Nitro instances say so in DMI; Xen ones in the hypervisor UUID."""
    for name in ("sys_vendor", "board_vendor", "bios_vendor"):
        f = root / "sys/class/dmi/id" / name
        if f.exists() and "amazon" in f.read_text().lower():
            return True
    uuid_file = root / "sys/hypervisor/uuid"
    return uuid_file.exists() and uuid_file.read_text().lower().startswith("ec2")


def imds_instance_id(base_url: str, timeout_s: float) -> str:
    """The EC2 instance ID through IMDSv2 (token PUT, then GET), retried until timeout_s."""
    deadline = time.monotonic() + timeout_s
    last = "no attempt"
    while True:
        try:
            token_req = urllib.request.Request(
                f"{base_url}/latest/api/token", method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
            with urllib.request.urlopen(token_req, timeout=2) as resp:
                token = str(resp.read().decode()).strip()
            id_req = urllib.request.Request(f"{base_url}/latest/meta-data/instance-id",
                                            headers={"X-aws-ec2-metadata-token": token})
            with urllib.request.urlopen(id_req, timeout=2) as resp:
                instance_id = str(resp.read().decode()).strip()
            if not _INSTANCE_ID_RE.match(instance_id):
                raise StepError(f"admin password: IMDS returned an odd instance id {instance_id!r}")
            return instance_id
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last = str(getattr(exc, "reason", exc))
        if time.monotonic() >= deadline:
            raise StepError(f"admin password: instance metadata (IMDSv2) at {base_url} did not "
                            f"answer ({last}); is the instance metadata service enabled?")
        time.sleep(1)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64); the only form the password is stored in."""
    salt = salt or secrets.token_bytes(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    mine = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                          p=int(p), dklen=32)
    return secrets.compare_digest(mine, base64.b64decode(digest))


def generated_password() -> str:
    """12 characters from an alphabet without look-alikes (l/1, O/0), easy to type."""
    alphabet = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(12))


def step_admin_password(ctx: Context) -> str:
    aws = ctx.platform == "aws" or (ctx.platform == "auto" and is_aws(ctx.root))
    if aws:
        password, source = imds_instance_id(ctx.metadata_url, ctx.metadata_timeout_s), "aws"
    else:
        password, source = generated_password(), "generated"
    state = {"user": "admin", "hash": hash_password(password), "source": source,
             "change_required": True, "created": datetime.now(UTC).isoformat()}
    _write(ctx.path(ADMIN_STATE), json.dumps(state, indent=2) + "\n", 0o600)
    if aws:
        ctx.path(INITIAL_PASSWORD).unlink(missing_ok=True)
        return "admin password: set to the EC2 instance ID (change forced at first login)"
    _write(ctx.path(INITIAL_PASSWORD), password + "\n", 0o600)
    _to_console(ctx, "\n".join([
        "", "=" * 64, " voxnode: initial password of the web console user 'admin':",
        f"     {password}", " You must change it at the first login.", "=" * 64, ""]))
    return ("admin password: generated, shown on the console only "
            f"(also in {INITIAL_PASSWORD}, root only); change forced at first login")


def _to_console(ctx: Context, text: str) -> None:
    """Straight to the console device, never to stdout (which goes to the journal)."""
    if ctx.console is None:
        return
    try:
        with open(ctx.console, "a") as out:
            out.write(text + "\n")
    except OSError as exc:
        log.warning("could not write to %s: %s", ctx.console, exc)


# --- 6. console banner ---------------------------------------------------------------


def banner(aws: bool) -> str:
    """The /etc/issue.d fragment; agetty expands \\4 / \\6 to the live addresses."""
    password = ("the EC2 instance ID of this instance" if aws else
                "shown on the console at first boot (root: " + INITIAL_PASSWORD + ")")
    return "\n".join([
        "voxnode appliance \\n (\\s \\r)",
        "  node address:  \\4  \\6",
        "  web console:   https://\\4/   user: admin",
        f"  initial admin password: {password}; a change is forced at first login",
        "  next steps: 1. log in to the web console  2. activate the licence (Security Update)",
        "              3. choose the working mode  4. pair a second node for fault tolerance",
        "  CLI (as root): voxnode status", "", ""])


def step_banner(ctx: Context) -> str:
    aws = ctx.platform == "aws" or (ctx.platform == "auto" and is_aws(ctx.root))
    _write(ctx.path(ISSUE_FILE), banner(aws), 0o644)
    return f"banner: {ISSUE_FILE}"


# --- driver --------------------------------------------------------------------------

STEPS: tuple[tuple[str, Callable[[Context], str]], ...] = (
    ("machine-id", step_machine_id),
    ("ssh-host-keys", step_ssh_host_keys),
    ("tls", step_tls),
    ("grow-root", step_grow_root),
    ("admin-password", step_admin_password),
    ("banner", step_banner),
)


def run(ctx: Context) -> int:
    stamp = ctx.path(DONE_STAMP)
    if stamp.exists() and not ctx.force:
        log.info("first boot already done (%s); nothing to do", DONE_STAMP)
        return EXIT_OK
    failed: list[str] = []
    report: dict[str, str] = {}
    for name, step in STEPS:
        started = time.monotonic()
        try:
            line = step(ctx)
        except (StepError, OSError, subprocess.SubprocessError) as exc:
            failed.append(name)
            log.error("%s: FAILED: %s", name, exc)
            report[name] = f"failed: {exc}"
            continue
        log.info("%s (%.2f s)", line, time.monotonic() - started)
        report[name] = line
        ctx.done.append(name)
    if failed:
        log.error("first boot incomplete (%s); it runs again at the next boot",
                  ", ".join(failed))
        return EXIT_STEP_FAILED
    _write(stamp, json.dumps({"finished": datetime.now(UTC).isoformat(), "steps": report},
                             indent=2) + "\n", 0o644)
    log.info("first boot done")
    return EXIT_OK


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="voxnode-firstboot", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("/"), help="node root (default /)")
    p.add_argument("--force", action="store_true",
                   help="run even if done, and give the node a new machine-id")
    p.add_argument("--platform", choices=("auto", "aws", "generic"), default="auto")
    p.add_argument("--metadata-url", default=os.environ.get("VOXNODE_IMDS_URL", IMDS_URL),
                   help="instance metadata endpoint (AWS; default %(default)s)")
    p.add_argument("--metadata-timeout", type=float, default=60.0, metavar="S")
    p.add_argument("--console", type=Path, default=Path("/dev/console"),
                   help="where the generated password is shown ('-' = nowhere)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="voxnode-firstboot: %(message)s",
                        stream=sys.stdout)
    if not args.root.is_dir():
        log.error("root %s is not a directory", args.root)
        return EXIT_BAD_ROOT
    if args.root.resolve() == Path("/") and os.geteuid() != 0:
        log.error("the first boot of the running system needs root")
        return EXIT_BAD_ROOT
    console = None if str(args.console) == "-" else args.console
    ctx = Context(root=args.root, platform=args.platform, metadata_url=args.metadata_url,
                  metadata_timeout_s=args.metadata_timeout, console=console, force=args.force)
    try:
        return run(ctx)
    except KeyboardInterrupt:
        return EXIT_STEP_FAILED


if __name__ == "__main__":
    sys.exit(main())
