"""voxnode-firstboot on a lab node: the real unit under the node's own systemd (run once,
then skipped by its ConditionPathExists), and the command's --force run.

The lab rootfs links only voxnode and voxnode-agent into /usr/bin, so a runtime drop-in
points the unit's ExecStart at the venv's voxnode-firstboot (the appliance RPM installs
/usr/bin/voxnode-firstboot). In a container the root file system is not a disk partition:
growing it is skipped with a log line. The lab rootfs has sshd (the pair's sync daemon), so
the host keys every node got from the image are replaced by keys of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.node.conftest import lab_exec

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("lab_up")]

NODE = "node2"
UNIT = "voxnode-firstboot.service"
DROPIN = f"/run/systemd/system/{UNIT}.d/lab.conf"
FIRSTBOOT = "/opt/voxnode/venv/bin/voxnode-firstboot"


def sh(script: str) -> str:
    proc = lab_exec(NODE, "/bin/sh", "-c", script)
    assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def unit_in_lab() -> Iterator[None]:
    sh(f"mkdir -p {DROPIN.rsplit('/', 1)[0]} && printf '[Service]\\nExecStart=\\n"
       f"ExecStart={FIRSTBOOT} --console /dev/null\\n' > {DROPIN} && "
       "rm -f /var/lib/voxnode/firstboot.done && systemctl daemon-reload")
    yield
    sh(f"rm -f {DROPIN} && systemctl daemon-reload")


def test_unit_runs_once_under_systemd(unit_in_lab: None) -> None:
    machine_id = sh("cat /etc/machine-id").strip()
    host_key = "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
    image_key = sh(host_key)
    sh(f"systemctl start {UNIT}")
    assert sh(f"systemctl show -p ActiveState --value {UNIT}").strip() == "active"
    assert sh(f"systemctl show -p Result --value {UNIT}").strip() == "success"
    stamp = json.loads(sh("cat /var/lib/voxnode/firstboot.done"))
    assert "not a disk partition" in stamp["steps"]["grow-root"]
    assert stamp["steps"]["ssh-host-keys"] == "ssh host keys: new rsa, ecdsa, ed25519"
    assert sh(host_key) != image_key
    assert stamp["steps"]["admin-password"].startswith("admin password: generated")
    journal = sh(f"journalctl -u {UNIT} -o cat --no-pager")
    assert "first boot done" in journal
    password = sh("cat /etc/voxnode/secrets/initial-admin-password").strip()
    assert password and password not in journal  # shown on the console only, never logged
    assert sh("stat -c %a /etc/voxnode/secrets/admin.json /etc/voxnode/tls/node.key").split() \
        == ["600", "600"]
    sh("/opt/voxnode/venv/bin/python -c \"from cryptography import x509; "
       "x509.load_pem_x509_certificate(open('/etc/voxnode/tls/node.crt','rb').read())\"")
    assert "https://\\4/" in sh("cat /etc/issue.d/voxnode.issue")
    assert sh("cat /etc/machine-id").strip() == machine_id  # valid already: kept
    # runs once: a second start is skipped by ConditionPathExists=!…/firstboot.done
    sh(f"systemctl stop {UNIT} && systemctl start {UNIT}")
    assert sh(f"systemctl show -p ConditionResult --value {UNIT}").strip() == "no"


def test_force_gives_the_node_a_new_identity() -> None:
    before = sh("cat /etc/machine-id; cat /etc/voxnode/tls/node.crt 2>/dev/null || true")
    out = sh(f"{FIRSTBOOT} --force --console /dev/null")
    assert "first boot done" in out and "grow root: skipped" in out
    after = sh("cat /etc/machine-id; cat /etc/voxnode/tls/node.crt")
    assert before.splitlines()[0] != after.splitlines()[0]
    assert before != after
    assert "nothing to do" in sh(f"{FIRSTBOOT} --console /dev/null")
