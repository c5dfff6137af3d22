"""Real MariaDB servers in the pair lab's node namespaces (``tests/netns``, ``bench``).

``DbServer`` runs one ``mariadbd`` as root in a network namespace, on its own data
directory, unix socket and TCP port 3306 of that namespace, with the product's drop-in
(``ha.replication.mariadb.render_server_config``) or any text the caller gives. A fresh
data directory is a copy of one ``mariadb-install-db`` made once per process (installing
takes a second; copying a few milliseconds). ``kill`` is a crash (SIGKILL: no shutdown,
no flush beyond what the server synced); ``stop`` a clean shutdown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from lab.pair.topology import LabError

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
CLIENT = "/usr/bin/mariadb"
READY_TIMEOUT_S = 30.0
PORT = 3306
_template_lock = threading.Lock()
_template: Path | None = None


def missing_tools() -> list[str]:
    return [t for t in (MARIADBD, INSTALL_DB, CLIENT) if not Path(t).exists()]


def server_version() -> str:
    """``mariadbd --version``'s version, for benchmark records."""
    try:
        out = subprocess.run([MARIADBD, "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except OSError:
        return "missing"
    parts = out.split()
    return parts[2] if len(parts) > 2 else out.strip()


def _template_datadir() -> Path:
    """One installed, never started data directory to copy (made once per process)."""
    global _template
    with _template_lock:
        if _template is None or not _template.exists():
            base = Path(tempfile.mkdtemp(prefix="vxdb-template-"))
            datadir = base / "data"
            proc = subprocess.run(
                [INSTALL_DB, f"--datadir={datadir}", "--user=root",
                 "--auth-root-authentication-method=socket", "--skip-test-db"],
                capture_output=True, text=True, timeout=120, check=False)
            if proc.returncode != 0:
                raise LabError(f"mariadb-install-db failed: {proc.stderr.strip()[-400:]}")
            _template = datadir
        return _template


class DbServer:
    """One server: ``base`` holds ``data/``, ``mysqld.sock``, ``server.log``, ``my.cnf``."""

    def __init__(self, netns: str, base: Path, drop_in: str, *, bind: str = "0.0.0.0",
                 socket: Path | None = None) -> None:
        self.netns = netns
        self.base = base
        self.datadir = base / "data"
        self.socket = str(socket or base / "mysqld.sock")
        self.log = base / "server.log"
        self.config = base / "my.cnf"
        self.drop_in = drop_in
        self.bind = bind
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.datadir.exists():
            shutil.rmtree(self.datadir)
        shutil.copytree(_template_datadir(), self.datadir, symlinks=True)

    def write_config(self, drop_in: str | None = None) -> None:
        if drop_in is not None:
            self.drop_in = drop_in
        (self.base / "voxnode-replication.cnf").write_text(self.drop_in)
        self.config.write_text(
            "[mariadbd]\n"
            f"datadir = {self.datadir}\n"
            f"socket = {self.socket}\n"
            f"pid-file = {self.base / 'mysqld.pid'}\n"
            f"port = {PORT}\n"
            f"bind-address = {self.bind}\n"
            "user = root\n"
            "skip-name-resolve\n"
            "innodb_buffer_pool_size = 32M\n"
            "innodb_log_file_size = 16M\n"
            "performance_schema = OFF\n"
            f"log-error = {self.log}\n"
            f"!include {self.base / 'voxnode-replication.cnf'}\n")

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise LabError(f"the database server in {self.netns} already runs")
        self.write_config()
        Path(self.socket).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, MARIADBD, f"--defaults-file={self.config}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"mariadbd in {self.netns} exited {self.proc.returncode}: "
                               f"{self.log_tail()}")
            if Path(self.socket).exists() and self.sql("SELECT 1", check=False) == "1":
                return
            time.sleep(0.05)
        raise LabError(f"mariadbd in {self.netns} not ready in {timeout:.0f} s: {self.log_tail()}")

    def sql(self, statement: str, *, check: bool = True, user: str | None = None,
            password: str | None = None, host: str | None = None) -> str:
        """One statement through the ``mariadb`` client (``-N -B``: bare values)."""
        argv = [CLIENT, "-N", "-B"]
        if host is None:
            argv.append(f"--socket={self.socket}")
        else:
            argv += [f"--host={host}", f"--port={PORT}"]
        if user is not None:
            argv.append(f"--user={user}")
        if password is not None:
            argv.append(f"--password={password}")
        argv += ["-e", statement]
        proc = subprocess.run(["ip", "netns", "exec", self.netns, *argv], capture_output=True,
                              text=True, timeout=30, check=False)
        if check and proc.returncode != 0:
            raise LabError(f"SQL in {self.netns} failed ({statement[:80]}): "
                           f"{proc.stderr.strip()}")
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def kill(self) -> None:
        """A crash: SIGKILL, nothing flushed beyond what the server synced."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

