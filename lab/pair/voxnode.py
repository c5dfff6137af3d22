"""The voxnode pair in the failover lab (``lab.pair.harness.PairLab``): two real agents.

Each node namespace runs ``voxnode-agent`` with its own state directory, socket and root
under the lab's workdir; its seed document configures the node address, the gateway (the
witness) and the ``ha`` section; both get the same pair key. Roles are read from each
agent's API (``GET /v1/ha``) through the CLI's own client, in-process, so polling is cheap.
Used by ``tests/netns`` and ``bench/pairbench.py``; ``problems_in_log`` also by the
namespace tier for every agent it starts.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from agent import loopwatch
from agent.cli.client import Client
from agent.errors import VoxnodeError
from lab.pair.harness import PairLab
from lab.pair.topology import (
    GATEWAY_IP,
    NODE_ADDRESSES,
    NODE_IP,
    NODES,
    SUBNET_PREFIXLEN,
    LabError,
    Node,
    other,
)

BIN = Path(sys.executable).parent


def problems_in_log(text: str) -> list[str]:
    """Stalls and durable writes on the event loop that an agent's log reports (an agent
    started with ``VOXNODE_LOOP_STALL_MS`` and ``VOXNODE_STRICT_LOOP=1`` logs both)."""
    return [line[:400] for line in text.splitlines()
            if loopwatch.STALL_MARK in line or "BlockingOnLoop" in line
            or "on the event loop" in line]


def seed(node: Node, profile: str, extra_ha: dict[str, Any] | None = None) -> str:
    ha = {
        "enabled": True, "peer": NODE_ADDRESSES[other(node)], "profile": profile,
        "shared_ips": [{"interface": "eth0", "address": f"{NODE_IP}/{SUBNET_PREFIXLEN}",
                        "primary": True}],
        # no database unless a test gives one (``lab.pair.mariadb``)
        "replication": {"database": {"engine": "none"}},
        **(extra_ha or {}),
    }
    document = {
        "schema_version": 2,
        "network": {
            "hostname": f"node{node}",
            "interfaces": {"eth0": {"addresses": [f"{NODE_ADDRESSES[node]}/{SUBNET_PREFIXLEN}"]}},
            "gateway": GATEWAY_IP,
        },
        "ha": ha,
    }
    return yaml.safe_dump(document, sort_keys=False)


class VoxnodePair:
    def __init__(self, lab: PairLab, profile: str = "standard",
                 extra_ha: dict[str, Any] | None = None) -> None:
        self.lab = lab
        self.profile = profile
        self.extra_ha = extra_ha
        # a command line to run an agent under (e.g. faketime for a clock far off)
        self.wrap: dict[Node, list[str]] = {}
        self.key = secrets.token_hex(32)
        self.procs: dict[Node, subprocess.Popen[bytes]] = {}

    def dir(self, node: Node) -> Path:
        return self.lab.workdir / f"voxnode-{node}"

    def socket(self, node: Node) -> str:
        return str(self.dir(node) / "agent.sock")

    def client(self, node: Node, timeout: float = 5.0) -> Client:
        return Client(self.socket(node), timeout=timeout)

    def start_node(self, node: Node) -> None:
        agent = BIN / "voxnode-agent"
        if not agent.exists():
            raise LabError(f"{agent} is missing: run under the repository's virtual "
                           "environment (make venv)")
        base = self.dir(node)
        (base / "root/etc/voxnode").mkdir(parents=True, exist_ok=True)
        (base / "root/etc/voxnode/seed.yaml").write_text(seed(node, self.profile, self.extra_ha))
        keyfile = base / "state/ha/pair.key"
        keyfile.parent.mkdir(parents=True, exist_ok=True)
        keyfile.write_text(self.key + "\n")
        keyfile.chmod(0o600)
        self.procs[node] = self.lab.spawn(node, [
            *self.wrap.get(node, []),
            str(agent), "--state-dir", str(base / "state"),
            "--socket", self.socket(node), "--root", str(base / "root"),
        ], log=base / "agent.log")

    def start(self, *, stagger_s: float = 0.0, timeout: float = 15.0) -> Node:
        for node in NODES:
            self.start_node(node)
            time.sleep(stagger_s)
        return self.wait_master(timeout=timeout)

    def status(self, node: Node) -> dict[str, Any] | None:
        if node in self.lab.faults.crashed:
            return None
        with contextlib.suppress(VoxnodeError, OSError):
            data: dict[str, Any] = self.client(node, timeout=2.0).get("/v1/ha")
            return data
        return None

    def role(self, node: Node) -> str | None:
        data = self.status(node)
        return None if data is None else data.get("role")

    def master(self) -> Node | None:
        masters = [n for n in NODES if self.role(n) == "master"]
        return masters[0] if len(masters) == 1 else None

    def wait_master(self, *, timeout: float) -> Node:
        """One master holding the node IP, the other slave (or crashed)."""
        deadline = time.monotonic() + timeout
        while True:
            master = self.master()
            if master is not None and self.lab.vip_holders() - set(self.lab.faults.crashed) == {
                master
            }:
                peer_role = self.role(other(master))
                if peer_role in ("slave", None):
                    return master
            if time.monotonic() > deadline:
                roles = {n: self.role(n) for n in NODES}
                raise LabError(f"voxnode: no single master within {timeout:g} s ({roles})")
            time.sleep(0.05)

    def wait_role(self, node: Node, role: str, *, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while self.role(node) != role:
            if time.monotonic() > deadline:
                raise LabError(f"node {node} is {self.role(node)}, not {role}, after "
                               f"{timeout:g} s")
            time.sleep(0.05)
        return time.monotonic()

    def switchover(self, *, peer_within: float = 5.0) -> float:
        """Ask the master to hand over, once it hears its peer (a node that just started
        says "slave" as soon as it heard the master, a heartbeat before the master has heard
        it; a switchover asked then is refused: nobody would take over); when it was asked."""
        master = self.master()
        if master is None:
            raise LabError("switchover: no master")
        deadline = time.monotonic() + peer_within
        while not ((self.status(master) or {}).get("peer") or {}).get("reachable"):
            if time.monotonic() > deadline:
                raise LabError(f"switchover: the master {master} has not heard its peer "
                               f"within {peer_within:g} s")
            time.sleep(0.05)
        at = time.monotonic()
        self.client(master).post("/v1/ha/switchover", {})
        return at

    def set_state(self, node: Node, state: str) -> float:
        at = time.monotonic()
        self.client(node).post("/v1/ha/state", {"state": state})
        return at

    def network_set(self, node: Node, **values: str) -> dict[str, Any]:
        """What `voxnode network set KEY=VALUE…` sends."""
        data: dict[str, Any] = self.client(node, timeout=30).post(
            "/v1/network", {"set": values})
        return data

    def events(self, node: Node) -> list[dict[str, Any]]:
        data: dict[str, Any] = self.client(node).get("/v1/ha/events")
        return list(data["events"])

    def stop_node(self, node: Node) -> float:
        proc = self.procs[node]
        at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        return at

    def loop_problems(self) -> list[str]:
        """Stalls of the agents' event loops and durable writes on them, from their logs
        (the tests start the agents with tests/loopguard.py's environment)."""
        found = []
        for node in self.procs:
            log = self.dir(node) / "agent.log"
            with contextlib.suppress(FileNotFoundError):
                found += [f"{node}: {line}" for line in problems_in_log(log.read_text(
                    errors="replace"))]
        return found

    def stop(self) -> None:
        for node, proc in self.procs.items():
            if proc.poll() is None and node not in self.lab.faults.crashed:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.stop_node(node)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
