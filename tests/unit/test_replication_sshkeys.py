"""The file sync's transport keys and configuration (ha/replication/sshkeys.py): derived
from the pair key, restricted per path, accepted by the real sshd and ssh-keygen."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

from ha.replication import sshkeys
from tests.unit.conftest import Golden

KEY = bytes(range(32))
PEER = ipaddress.ip_address("10.0.0.11")
PATHS = ["/var/spool/asterisk/monitor", "/var/spool/asterisk/voicemail"]


def test_keys_follow_the_pair_key_and_differ_per_path_and_purpose() -> None:
    # the public line (the private file carries a random check word)
    assert sshkeys.host_key(KEY)[1] == sshkeys.host_key(KEY)[1]
    assert sshkeys.host_key(KEY)[1] != sshkeys.host_key(bytes(32))[1]
    publics = {sshkeys.path_key(KEY, p)[1] for p in PATHS}
    publics |= {sshkeys.pull_key(KEY, p)[1] for p in PATHS}
    publics.add(sshkeys.database_key(KEY)[1])
    assert len(publics) == 5
    assert sshkeys.host_key(KEY)[1] not in publics
    files = {f for f, _, _ in sshkeys.client_keys(KEY, PATHS, True)}
    assert len(files) == 5 and sshkeys.DATABASE_KEY_FILE in files
    assert sshkeys.path_key_file(PATHS[0]) != sshkeys.path_key_file(PATHS[1])
    assert sshkeys.pull_key_file(PATHS[0]) != sshkeys.path_key_file(PATHS[0])


def test_each_key_does_one_thing_from_the_peer_only(golden: Golden) -> None:
    text = sshkeys.render_authorized_keys(KEY, PEER, PATHS,
                                          database_socket="/run/mysqld/mysqld.sock")
    golden.check("replication/authorized_keys", text)
    lines = text.splitlines()[1:]
    assert len(lines) == 5
    shell = "/usr/libexec/platform-python -I -S /usr/libexec/voxnode/sync-shell"
    for i, path in enumerate(PATHS):
        write, read = lines[2 * i], lines[2 * i + 1]
        assert write.startswith(f'from="10.0.0.11",restrict,command="{shell} receive {path} '
                                f'/run/voxnode/full-sync" '
                                "ssh-ed25519 ")
        assert sshkeys.path_key(KEY, path)[1] in write
        assert read.startswith(f'from="10.0.0.11",restrict,command="{shell} send {path}" ')
        assert sshkeys.pull_key(KEY, path)[1] in read
    assert lines[4].startswith(f'from="10.0.0.11",restrict,command="{shell} database '
                               '/run/mysqld/mysqld.sock" ')
    # no database: no key for it
    assert len(sshkeys.render_authorized_keys(KEY, PEER, PATHS).splitlines()) == 5


@pytest.mark.parametrize("bad", ['/srv/a b', '/srv/a"b', "/srv/a\\b", "relative"])
def test_a_forced_command_never_takes_what_would_split_or_escape_it(bad: str) -> None:
    with pytest.raises(ValueError):
        sshkeys.render_authorized_keys(KEY, PEER, [bad])


def test_the_daemon_takes_no_password_and_no_shell(golden: Golden, tmp_path: Path) -> None:
    text = sshkeys.render_sshd_config(ipaddress.ip_address("10.0.0.12"))
    golden.check("replication/sshd_config", text)
    for setting in ("PasswordAuthentication no", "PermitTTY no", "AllowTcpForwarding no",
                    "PermitRootLogin forced-commands-only", "ListenAddress 10.0.0.12:7422"):
        assert setting in text.splitlines()
    assert sshkeys.render_known_hosts(KEY, PEER) == (
        f"[10.0.0.11]:7422 {sshkeys.host_key(KEY)[1]}\n")


@pytest.mark.skipif(shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists(),
                    reason="openssh-server is not installed (make apt)")
def test_the_real_sshd_accepts_the_configuration(tmp_path: Path) -> None:
    private, public = sshkeys.host_key(KEY)
    host = tmp_path / "host_key"
    host.write_bytes(private)
    host.chmod(0o600)
    config = sshkeys.render_sshd_config(ipaddress.ip_address("127.0.0.1")).replace(
        sshkeys.HOST_KEY, str(host)).replace(sshkeys.AUTHORIZED_KEYS, str(tmp_path / "ak"))
    (tmp_path / "sshd_config").write_text(config)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd -t wants its privilege separation dir
    checked = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(tmp_path / "sshd_config")],
                             capture_output=True, text=True, timeout=20, check=False)
    assert checked.returncode == 0, checked.stderr
    # and ssh-keygen reads back the derived keys as the public lines say
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(host)], capture_output=True,
                             text=True, timeout=20, check=False)
    assert derived.stdout.split()[:2] == public.split()[:2], derived.stderr
