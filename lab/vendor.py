"""The vendor inside the lab: ``voxnode-license-server`` and the mail sink it sends codes to.

Both run in the network namespace ``vxlab-lic``, a host of its own on the lab LAN
(10.77.0.201, plugged into the lab bridge like a node), so nothing of it reaches the host's
network: the server listens on 10.77.0.201:8443 (plain HTTP, a lab) and signs with the lab
vendor key (``lab.rootfs.lab_vendor_key``, whose public half every node ships as
``/etc/voxnode/vendor.pub``); its SMTP relay is the sink (``lab.mailsink``) on the
namespace's loopback, which appends every message to ``out/lab/vendor/mail.jsonl``. The
database, the logs and the mailbox are under ``out/lab/vendor/``, fresh at every ``up``.

``lab down`` stops both with everything else in a lab namespace (``lab.nodes``) and removes
the namespace; ``start`` records their pids and start times in the state file too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import net
from lab.util import REPO, LabError, Paths, run, started_at, tail

NETNS = f"{net.PREFIX}lic"
PORT = "vx-lic"  # the bridge-side end of its veth pair
ADDRESS = "10.77.0.201"
HTTP_PORT = 8443
SMTP_PORT = 2525
URL = f"http://{ADDRESS}:{HTTP_PORT}"
START_TIMEOUT_S = 20.0
VENDOR_MEMBER = net.Member("lic", ADDRESS)


@dataclass(frozen=True)
class Vendor:
    base: Path  # out/lab/vendor

    @property
    def db(self) -> str:
        return f"sqlite:///{self.base / 'licences.db'}"

    @property
    def mailbox(self) -> Path:
        return self.base / "mail.jsonl"

    def log(self, name: str) -> Path:
        return self.base / f"{name}.log"

    def vendor_cli(self, *args: str) -> str:
        """The vendor's CLI on the database (``serial create``, ``activations``, …)."""
        cmd = [sys.executable, "-m", "license_server.cli", *args[:2], "--db", self.db,
               *args[2:]]
        return run(cmd, env=_env(), timeout=60).stdout.strip()

    def create_serial(self, modules: str, email: str, company: str) -> str:
        return self.vendor_cli("serial", "create", "--email", email, "--modules", modules,
                               "--company", company)

    def code_for(self, serial: str) -> str:
        """The verification code the server emailed for ``serial`` (the last one, if it
        sent several); waits for it up to 15 s."""
        from lab.mailsink import CODE_RE, messages

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for message in reversed(messages(self.mailbox)):
                if serial not in message.get("subject", ""):
                    continue
                if found := CODE_RE.search(message["body"]):
                    return found.group(1)
            time.sleep(0.1)
        raise LabError(f"the licence server emailed no verification code for {serial} "
                       f"({self.mailbox}; server log {self.log('server')})",
                       detail=tail(self.log("server"), 12))


def _env() -> dict[str, str]:
    """The lab's own checkout first on the path, whatever the venv's editable install says."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _spawn(vendor: Vendor, name: str, argv: list[str], marker: str) -> dict[str, Any]:
    log = vendor.log(name)
    with log.open("ab") as fh:
        proc = subprocess.Popen(["ip", "netns", "exec", NETNS, *argv], stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env=_env(), start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while marker not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the lab's {name} did not start (log {log})", detail=tail(log, 15))
        time.sleep(0.05)
    return {"pid": proc.pid, "started": started_at(proc.pid), "log": str(log)}


def attach() -> None:
    """The vendor's host on the lab LAN: its namespace, eth0 10.77.0.201/24 on the bridge."""
    net.ip("netns", "add", NETNS)
    net.ip("link", "set", "lo", "up", netns=NETNS)
    net.ip("link", "add", PORT, "netns", net.BRIDGE_NS, "type", "veth",
           "peer", "name", "eth0", "netns", NETNS)
    net.ip("link", "set", PORT, "master", net.BRIDGE, "up", netns=net.BRIDGE_NS)
    net.ip("addr", "add", f"{ADDRESS}/{net.PREFIXLEN}", "dev", "eth0", netns=NETNS)
    net.ip("link", "set", "eth0", "up", netns=NETNS)


def start(paths: Paths) -> tuple[Vendor, dict[str, Any]]:
    """Attach the vendor's namespace, start the mail sink then the licence server; what
    was started (for the state file)."""
    from lab.rootfs import lab_vendor_key

    vendor = Vendor(paths.out / "vendor")
    shutil.rmtree(vendor.base, ignore_errors=True)
    vendor.base.mkdir(parents=True)
    private, _ = lab_vendor_key(paths)
    attach()
    sink = _spawn(vendor, "mailsink", [sys.executable, "-m", "lab.mailsink", "127.0.0.1",
                                       str(SMTP_PORT), str(vendor.mailbox)], "mailsink on")
    server = _spawn(vendor, "server", [
        sys.executable, "-m", "license_server.cli", "serve", "--db", vendor.db,
        "--listen", f"{ADDRESS}:{HTTP_PORT}", "--signing-key", str(private),
        "--smtp", f"127.0.0.1:{SMTP_PORT}"], "listening on")
    return vendor, {"netns": NETNS, "url": URL, "base": str(vendor.base),
                    "mailsink": sink, "server": server}
