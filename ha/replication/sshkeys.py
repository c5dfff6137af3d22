"""The file sync's transport, authenticated by the pair key: rsync over a dedicated SSH
daemon, restricted per replicated path. Pure: what to write, not writing it.

The master pushes each replicated path to the slave with rsync over SSH. The slave runs an
SSH daemon of its own for that (``render_sshd_config``: its own port on the management
address, no passwords, no forwarding, no shell, only the authorized keys file below), so
the system's sshd is left as the administrator has it.

Every key is derived from the pair key, so nothing is exchanged and a new pair key
replaces them all: the daemon's host key (``host_key``: the master pins it in its
``known_hosts``, ``render_known_hosts``), and one client key per path (``path_key``).
Each client key is authorized only from the peer's address and only to write into its
own path (``render_authorized_keys``: ``command="rrsync -wo -munge PATH"``, ``restrict``):
a stolen key writes into one directory of one node, never a shell, never another path.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SYNC_PORT = 7422
RRSYNC = "/usr/bin/rrsync"
SSH_DIR = "/etc/voxnode/sync"
HOST_KEY = f"{SSH_DIR}/ssh_host_ed25519_key"
AUTHORIZED_KEYS = f"{SSH_DIR}/authorized_keys"
KNOWN_HOSTS = f"{SSH_DIR}/known_hosts"
SSHD_CONFIG = f"{SSH_DIR}/sshd_config"
_INFO = b"voxnode file sync v1 "

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _derive(pair_key: bytes, purpose: str) -> Ed25519PrivateKey:
    seed = hmac.new(pair_key, _INFO + purpose.encode(), hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def _private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def _public(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def host_key(pair_key: bytes) -> tuple[bytes, str]:
    """The sync daemon's host key (private, OpenSSH format) and its public line."""
    key = _derive(pair_key, "host")
    return _private(key), _public(key)


def path_key(pair_key: bytes, path: str) -> tuple[bytes, str]:
    """The client key that may write ``path`` (private, OpenSSH format) and its public line."""
    key = _derive(pair_key, f"path {path}")
    return _private(key), _public(key)


def path_key_file(path: str) -> str:
    """Where the master keeps the key for ``path``."""
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return f"{SSH_DIR}/path-{digest}.key"


def render_authorized_keys(pair_key: bytes, peer: IP, paths: list[str],
                           where: dict[str, str] | None = None) -> str:
    """The slave's authorized keys: one per path, from the peer only, writing that path
    only (and nothing else: no shell, no forwarding, no pty). ``where``: the directory
    rrsync is given for a path, when it is not the path itself (a node under another
    root)."""
    lines = ["# Written by voxnode-agent: the file sync's keys (one per replicated path)."]
    for path in paths:
        _, public = path_key(pair_key, path)
        target = (where or {}).get(path, path)
        lines.append(f'from="{peer}",restrict,command="{RRSYNC} -wo -munge {target}" '
                     f"{public} voxnode-sync:{path}")
    return "\n".join(lines) + "\n"


def render_known_hosts(pair_key: bytes, peer: IP) -> str:
    """The master's known hosts: the peer's sync daemon, pinned."""
    _, public = host_key(pair_key)
    host = f"[{peer}]:{SYNC_PORT}"
    return f"{host} {public}\n"


def render_sshd_config(own: IP, *, host_key: str = HOST_KEY,
                       authorized_keys: str = AUTHORIZED_KEYS) -> str:
    """The sync daemon's configuration (``sshd -f``): the management address only, keys
    only, every forwarding and the shell off."""
    return "\n".join([
        "# Written by voxnode-agent: the SSH daemon of the file sync (not the system's).",
        f"ListenAddress {own}:{SYNC_PORT}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin forced-commands-only",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "AllowTcpForwarding no",
        "AllowStreamLocalForwarding no",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PermitTTY no",
        "PermitUserEnvironment no",
        "# no Subsystem line: no sftp",
        "StrictModes yes",
        "MaxAuthTries 3",
        "MaxStartups 4:50:16",
        "LoginGraceTime 10",
        "PidFile none",
        "",
    ])
