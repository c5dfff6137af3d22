"""A real ``voxnode-license-server serve`` process and an aiosmtpd mail sink.

``LicenceServerLab`` runs both (on 127.0.0.1, or inside a network namespace when given a
command prefix such as ``ip netns exec NS``), with a fresh signing key and SQLite file,
and offers the vendor CLI (``vendor("serial", "create", …)``). Every process it started is
stopped afterwards. Nothing leaves the machine: the SMTP relay is the sink.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.licence.mailsink import last_code, messages

REPO = Path(__file__).resolve().parents[2]
SERVER = Path(sys.executable).parent / "voxnode-license-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LicenceServerLab:
    def __init__(self, base: Path, *, host: str = "127.0.0.1", prefix: tuple[str, ...] = (),
                 code_ttl: int = 900) -> None:
        self.base, self.host, self.prefix, self.code_ttl = base, host, prefix, code_ttl
        self.port, self.smtp_port = free_port(), free_port()
        self.key = base / "signing.key"
        self.mailbox = base / "mail.jsonl"
        self.db = f"sqlite:///{base / 'licences.db'}"
        self.procs: list[subprocess.Popen[bytes]] = []
        done = subprocess.run([str(SERVER), "keygen", "--out", str(self.key)],
                              capture_output=True, text=True, check=True, timeout=30)
        self.public_key = Path(done.stdout.strip())

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _spawn(self, name: str, *cmd: str) -> None:
        log = (self.base / f"{name}.log").open("ab")
        self.procs.append(subprocess.Popen([*self.prefix, *cmd], stdout=log,
                                           stderr=subprocess.STDOUT, cwd=REPO,
                                           stdin=subprocess.DEVNULL))

    def start(self) -> None:
        self._spawn("mailsink", sys.executable, "-m", "tests.licence.mailsink", "127.0.0.1",
                    str(self.smtp_port), str(self.mailbox))
        self._spawn("server", str(SERVER), "serve", "--db", self.db, "--listen",
                    f"{self.host}:{self.port}", "--signing-key", str(self.key), "--smtp",
                    f"127.0.0.1:{self.smtp_port}", "--code-ttl", str(self.code_ttl))
        deadline = time.monotonic() + 15
        while "listening on" not in self.log("server") or "mailsink on" not in self.log(
                "mailsink"):
            for proc in self.procs:
                assert proc.poll() is None, f"a licence lab process exited:\n{self.logs()}"
            assert time.monotonic() < deadline, f"licence lab did not start:\n{self.logs()}"
            time.sleep(0.05)

    def log(self, name: str) -> str:
        try:
            return (self.base / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> str:
        return f"server:\n{self.log('server')}\nmailsink:\n{self.log('mailsink')}"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def vendor(self, *args: str) -> str:
        done = subprocess.run([str(SERVER), *args[:2], "--db", self.db, *args[2:]]
                              if args[0] == "serial" else [str(SERVER), args[0], "--db",
                                                           self.db, *args[1:]],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def create(self, modules: str, email: str = "orders@acme.example", *extra: str) -> str:
        return self.vendor("serial", "create", "--email", email, "--modules", modules,
                           "--company", "ACME S.p.A.", *extra)

    def audit(self, serial: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.vendor("audit", serial, "--json"))
        return rows

    def code(self) -> str:
        return last_code(self.mailbox)

    def mails(self) -> list[dict[str, Any]]:
        return messages(self.mailbox)


@pytest.fixture
def licence_server(tmp_path: Path) -> Iterator[LicenceServerLab]:
    lab = LicenceServerLab(tmp_path)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
