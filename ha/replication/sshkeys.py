"""The file sync's transport, authenticated by the pair key: rsync over a dedicated SSH
daemon, restricted per replicated path. Pure: what to write, not writing it.

The master pushes each replicated path to the slave with rsync over SSH. The slave runs an
SSH daemon of its own for that (``render_sshd_config``: its own port on the management
address, no passwords, no forwarding, no shell, only the authorized keys file below), so
the system's sshd is left as the administrator has it.

Every key is derived from the pair key, so nothing is exchanged and a new pair key
replaces them all: the daemon's host key (``host_key``: the client pins it in its
``known_hosts``, ``render_known_hosts``); per replicated path one key that may write it
(``path_key``: the master's pushes) and one that may read it (``pull_key``: a slave's full
sync); one key that may read the database (``database_key``: a full sync's dump). Each is
authorized only from the peer's address, with ``restrict`` (no pty, no forwarding) and a
forced command, the sync shell (``ha.replication.syncshell``), given the one thing the key
may do (``render_authorized_keys``): a stolen key writes into one directory of one node,
or reads one, never a shell, never another path.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SYNC_PORT = 7422
# what a path in a forced command may hold: sshd hands the command to a shell
SAFE_PATH = re.compile(r"/[A-Za-z0-9._+@,=:/-]*")
# the sync shell as installed by the node's package, and the interpreter it runs under
# (AlmaLinux 8's own Python; where there is none, the system's python3: the lab)
SYNC_SHELL = "/usr/libexec/voxnode/sync-shell"
PYTHONS = ("/usr/libexec/platform-python", "/usr/bin/python3")
# while this file exists the node runs a full sync: the peer's pushes wait (tmpfs: gone at
# a reboot; the agent removes one left by a crash when it starts)
PAUSE_FILE = "/run/voxnode/full-sync"
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


def pull_key(pair_key: bytes, path: str) -> tuple[bytes, str]:
    """The client key that may read ``path`` (a full sync pulling it from the master)."""
    key = _derive(pair_key, f"pull {path}")
    return _private(key), _public(key)


def database_key(pair_key: bytes) -> tuple[bytes, str]:
    """The client key that may read the database (a full sync's dump)."""
    key = _derive(pair_key, "database")
    return _private(key), _public(key)


def _key_file(kind: str, path: str) -> str:
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return f"{SSH_DIR}/{kind}-{digest}.key"


def path_key_file(path: str) -> str:
    """Where a node keeps the key that writes ``path`` on the peer."""
    return _key_file("path", path)


def pull_key_file(path: str) -> str:
    """Where a node keeps the key that reads ``path`` on the peer."""
    return _key_file("pull", path)


DATABASE_KEY_FILE = f"{SSH_DIR}/database.key"


def client_keys(pair_key: bytes, paths: list[str], database: bool
                ) -> list[tuple[str, bytes, str]]:
    """Every client key a node keeps (either node may be master): (file, private, public)."""
    keys = []
    for path in paths:
        keys.append((path_key_file(path), *path_key(pair_key, path)))
        keys.append((pull_key_file(path), *pull_key(pair_key, path)))
    if database:
        keys.append((DATABASE_KEY_FILE, *database_key(pair_key)))
    return keys


def shell_command(python: str, shell: str, mode: str, arg: str, pause: str | None = None
                  ) -> str:
    """The forced command of one key (``mode`` receive, send or database; a receiver
    pauses while the file ``pause`` exists)."""
    for value in (python, shell, arg, *([pause] if pause else [])):
        if not SAFE_PATH.fullmatch(value):
            raise ValueError(f"{value!r} cannot be written into a forced command")
    return f"{python} -I -S {shell} {mode} {arg}" + (f" {pause}" if pause else "")


def render_authorized_keys(pair_key: bytes, peer: IP, paths: list[str],
                           where: dict[str, str] | None = None, *,
                           database_socket: str | None = None,
                           python: str = PYTHONS[0], shell: str = SYNC_SHELL,
                           pause: str = PAUSE_FILE) -> str:
    """A node's authorized keys, for the peer only: per path, one key writing it and one
    reading it; with ``database_socket``, one key reading the database through it. Each runs
    the sync shell, never a shell. ``where``: the directory (or socket) the shell is given
    for a path when it is not the path itself (a node under another root)."""
    where = where or {}
    lines = ["# Written by voxnode-agent: the replication's keys (the peer's, each with the "
             "one transfer it may do)."]

    def line(public: str, mode: str, arg: str, label: str) -> str:
        command = shell_command(python, shell, mode, arg, pause if mode == "receive" else None)
        return f'from="{peer}",restrict,command="{command}" {public} voxnode-sync:{label}'

    for path in paths:
        target = where.get(path, path)
        lines.append(line(path_key(pair_key, path)[1], "receive", target, f"write:{path}"))
        lines.append(line(pull_key(pair_key, path)[1], "send", target, f"read:{path}"))
    if database_socket is not None:
        lines.append(line(database_key(pair_key)[1], "database", database_socket, "database"))
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
        "# sshd runs each forced command through root's shell; bash reads root's ~/.bashrc",
        "# when sshd starts it (an administrator's additions: a slow prompt, a tool's init)",
        "# unless it already runs one level down: SHLVL=1 keeps it out",
        "SetEnv SHLVL=1",
        "MaxAuthTries 3",
        "MaxStartups 4:50:16",
        "LoginGraceTime 10",
        "PidFile none",
        "",
    ])
