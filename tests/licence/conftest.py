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

from agent.licence.document import load_private_key, public_key_pem
from tests.licence.mailsink import last_code, messages

REPO = Path(__file__).resolve().parents[2]
SERVER = Path(sys.executable).parent / "voxnode-license-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class LicenceServerLab:
    def __init__(self, base: Path, *, host: str = "127.0.0.1", prefix: tuple[str, ...] = (),
                 code_ttl: int = 900, signing_key: Path | None = None) -> None:
        """A fresh signing key under ``base``, or ``signing_key`` (e.g. the lab vendor key,
        whose public half the lab nodes carry)."""
        self.base, self.host, self.prefix, self.code_ttl = base, host, prefix, code_ttl
        self.port, self.smtp_port = free_port(), free_port()
        self.mailbox = base / "mail.jsonl"
        self.db = f"sqlite:///{base / 'licences.db'}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server: subprocess.Popen[bytes] | None = None
        if signing_key is None:
            self.key = base / "signing.key"
            done = subprocess.run([str(SERVER), "keygen", "--out", str(self.key)],
                                  capture_output=True, text=True, check=True, timeout=30)
            self.public_key = Path(done.stdout.strip())
        else:
            base.mkdir(parents=True, exist_ok=True)
            self.key = signing_key
            self.public_key = base / "vendor.pub"
            private = load_private_key(signing_key.read_bytes())
            self.public_key.write_bytes(public_key_pem(private.public_key()))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _spawn(self, name: str, *cmd: str) -> subprocess.Popen[bytes]:
        log = (self.base / f"{name}.log").open("ab")
        proc = subprocess.Popen([*self.prefix, *cmd], stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def _wait(self, proc: subprocess.Popen[bytes], name: str, marker: str, seen: int) -> None:
        deadline = time.monotonic() + 15
        while self.log(name).count(marker) <= seen:
            assert proc.poll() is None, f"the licence lab's {name} exited:\n{self.logs()}"
            assert time.monotonic() < deadline, f"licence lab did not start:\n{self.logs()}"
            time.sleep(0.05)

    def start(self) -> None:
        seen = self.log("mailsink").count("mailsink on")
        sink = self._spawn("mailsink", sys.executable, "-m", "lab.mailsink",
                           "127.0.0.1", str(self.smtp_port), str(self.mailbox))
        self._wait(sink, "mailsink", "mailsink on", seen)
        self.start_server()

    def start_server(self) -> None:
        """(Re)start the server process alone (the mail sink keeps running)."""
        assert self.server is None or self.server.poll() is not None, "the server runs"
        seen = self.log("server").count("listening on")
        self.server = self._spawn(
            "server", str(SERVER), "serve", "--db", self.db, "--listen",
            f"{self.host}:{self.port}", "--signing-key", str(self.key), "--smtp",
            f"127.0.0.1:{self.smtp_port}", "--code-ttl", str(self.code_ttl))
        self._wait(self.server, "server", "listening on", seen)

    def stop_server(self) -> None:
        """Stop the server process alone (a node's checks then find nobody listening)."""
        assert self.server is not None
        _terminate(self.server)

    def log(self, name: str) -> str:
        try:
            return (self.base / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> str:
        return f"server:\n{self.log('server')}\nmailsink:\n{self.log('mailsink')}"

    def stop(self) -> None:
        for proc in self.procs:
            _terminate(proc)

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
