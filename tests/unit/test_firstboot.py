"""voxnode-firstboot against a temporary root: every step, the run-once stamp, the AWS
password through a local fake of the instance metadata service (IMDSv2, on 127.0.0.1 —
never the real 169.254.169.254), and the pure helpers (mount table, sysfs partitions)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from cryptography import x509

from agent import firstboot as fb


class FakeImds(BaseHTTPRequestHandler):
    """IMDSv2: PUT /latest/api/token, then GET with the token header; v1 GETs are refused."""

    token = "tok-123"
    instance_id = "i-0abc1234def567890"
    v2 = True
    seen: list[str] = []

    def do_PUT(self) -> None:
        self.seen.append(f"PUT {self.path}")
        if not self.v2 or self.path != "/latest/api/token" or \
                "X-aws-ec2-metadata-token-ttl-seconds" not in self.headers:
            self.send_error(403)
            return
        self._reply(self.token)

    def do_GET(self) -> None:
        self.seen.append(f"GET {self.path}")
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            self.send_error(401)
            return
        if self.path == "/latest/meta-data/instance-id":
            self._reply(self.instance_id)
        else:
            self.send_error(404)

    def _reply(self, body: str) -> None:
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def imds() -> Iterator[str]:
    FakeImds.seen = []
    FakeImds.v2 = True
    server = HTTPServer(("127.0.0.1", 0), FakeImds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def ctx(root: Path, **kw: object) -> fb.Context:
    params: dict[str, object] = {"platform": "generic", "console": root / "console"}
    params.update(kw)
    return fb.Context(root=root, **params)  # type: ignore[arg-type]


def test_generic_first_boot_does_every_step_once(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("")
    caplog.set_level("INFO")
    assert fb.run(ctx(tmp_path)) == fb.EXIT_OK
    mid = (tmp_path / "etc/machine-id").read_text().strip()
    assert len(mid) == 32 and int(mid, 16) >= 0
    cert = x509.load_pem_x509_certificate((tmp_path / fb.NODE_TLS_CERT.lstrip("/")).read_bytes())
    assert cert.subject == cert.issuer
    key = tmp_path / fb.NODE_TLS_KEY.lstrip("/")
    assert key.stat().st_mode & 0o777 == 0o600
    state = json.loads((tmp_path / fb.ADMIN_STATE.lstrip("/")).read_text())
    assert state["source"] == "generated" and state["change_required"] is True
    password = (tmp_path / fb.INITIAL_PASSWORD.lstrip("/")).read_text().strip()
    assert fb.verify_password(password, state["hash"])
    assert not fb.verify_password(password + "x", state["hash"])
    assert password in (tmp_path / "console").read_text()
    assert password not in caplog.text  # never logged (stdout goes to the journal)
    issue = (tmp_path / fb.ISSUE_FILE.lstrip("/")).read_text()
    assert "https://\\4/" in issue and "licence" in issue
    stamp = json.loads((tmp_path / fb.DONE_STAMP.lstrip("/")).read_text())
    assert "skipped" in stamp["steps"]["grow-root"]
    assert "sshd is not installed" in stamp["steps"]["ssh-host-keys"]
    # runs once: a second run changes nothing
    before = (tmp_path / fb.NODE_TLS_CERT.lstrip("/")).read_bytes()
    assert fb.run(ctx(tmp_path)) == fb.EXIT_OK
    assert (tmp_path / fb.NODE_TLS_CERT.lstrip("/")).read_bytes() == before
    assert (tmp_path / "etc/machine-id").read_text().strip() == mid
    # --force makes a new identity
    assert fb.run(ctx(tmp_path, force=True)) == fb.EXIT_OK
    assert (tmp_path / "etc/machine-id").read_text().strip() != mid
    assert (tmp_path / fb.NODE_TLS_CERT.lstrip("/")).read_bytes() != before


def test_valid_machine_id_is_kept_without_force(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert "kept" in fb.step_machine_id(ctx(tmp_path))
    assert (tmp_path / "etc/machine-id").read_text().startswith("0123456789abcdef")


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_ssh_host_keys_are_replaced_when_sshd_exists(tmp_path: Path) -> None:
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/sshd").write_text("")
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/ssh/ssh_host_rsa_key").write_text("image key")
    line = fb.step_ssh_host_keys(ctx(tmp_path))
    assert "new" in line
    for kind in fb.SSH_KEY_TYPES:
        key = tmp_path / f"etc/ssh/ssh_host_{kind}_key"
        assert key.read_text() != "image key" and "PRIVATE KEY" in key.read_text()
        assert key.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / f"etc/ssh/ssh_host_{kind}_key.pub").exists()


def test_aws_password_is_the_instance_id_via_imdsv2(tmp_path: Path, imds: str) -> None:
    assert fb.run(ctx(tmp_path, platform="aws", metadata_url=imds)) == fb.EXIT_OK
    assert FakeImds.seen[:2] == ["PUT /latest/api/token", "GET /latest/meta-data/instance-id"]
    state = json.loads((tmp_path / fb.ADMIN_STATE.lstrip("/")).read_text())
    assert state["source"] == "aws"
    assert fb.verify_password(FakeImds.instance_id, state["hash"])
    assert not (tmp_path / fb.INITIAL_PASSWORD.lstrip("/")).exists()
    assert not (tmp_path / "console").exists()  # nothing to show: the ID is the password
    assert "EC2 instance ID" in (tmp_path / fb.ISSUE_FILE.lstrip("/")).read_text()


def test_aws_without_imdsv2_fails_and_retries_next_boot(tmp_path: Path, imds: str) -> None:
    FakeImds.v2 = False
    code = fb.run(ctx(tmp_path, platform="aws", metadata_url=imds, metadata_timeout_s=0.5))
    assert code == fb.EXIT_STEP_FAILED
    assert not (tmp_path / fb.DONE_STAMP.lstrip("/")).exists()
    assert not (tmp_path / fb.ADMIN_STATE.lstrip("/")).exists()
    assert (tmp_path / fb.ISSUE_FILE.lstrip("/")).exists()  # later steps still ran


def test_aws_is_detected_from_dmi(tmp_path: Path) -> None:
    assert not fb.is_aws(tmp_path)
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "sys_vendor").write_text("Amazon EC2\n")
    assert fb.is_aws(tmp_path)


MOUNTINFO = """\
22 1 252:3 / / rw,relatime shared:1 - xfs /dev/vda3 rw,attr2
30 22 252:2 / /boot rw,relatime shared:2 - xfs /dev/vda2 rw
"""


def test_root_source_and_partition_from_sysfs(tmp_path: Path) -> None:
    assert fb.root_source(MOUNTINFO) == ("/dev/vda3", "xfs")
    assert fb.root_source("1 0 0:1 / / rw - overlay overlay rw\n") == ("overlay", "overlay")
    disk = tmp_path / "devices/virtual/block/nvme0n1"
    (disk / "nvme0n1p3").mkdir(parents=True)
    (disk / "nvme0n1p3/partition").write_text("3\n")
    sys_block = tmp_path / "class/block"
    sys_block.mkdir(parents=True)
    (sys_block / "nvme0n1p3").symlink_to(disk / "nvme0n1p3")
    (sys_block / "nvme0n1").symlink_to(disk)
    assert fb.partition_of("/dev/nvme0n1p3", sys_block) == ("/dev/nvme0n1", 3)
    assert fb.partition_of("/dev/nvme0n1", sys_block) is None
    assert fb.partition_of("overlay", sys_block) is None


def test_bad_root_is_one_line_and_exit_3(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    assert fb.main(["--root", str(tmp_path / "nope"), "--console", "-"]) == fb.EXIT_BAD_ROOT
    assert [r.getMessage() for r in caplog.records] == [
        f"root {tmp_path / 'nope'} is not a directory"]
