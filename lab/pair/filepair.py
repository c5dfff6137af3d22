"""Two real agents syncing files, each node with the sync daemon its agent configured
(real sshd, the sync shell): what the file tests and the replication benchmark share."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lab.pair.dbpair import wait_for
from lab.pair.topology import NODES, LabError, Node
from lab.pair.voxnode import VoxnodePair

PATHS = ["/srv/rec", "/srv/vm"]
SSHD = Path("/usr/sbin/sshd")
EXTRA_HA = {"replication": {"database": {"engine": "none"}, "paths": PATHS,
                            "bandwidth_kb": 100000}}


class FilePair:
    def __init__(self, pair: VoxnodePair) -> None:
        self.pair = pair
        self.lab = pair.lab
        self.sshd: dict[Node, subprocess.Popen[bytes]] = {}

    def root(self, node: Node) -> Path:
        return self.pair.dir(node) / "root"

    def at(self, node: Node, path: str) -> Path:
        return self.root(node) / path.lstrip("/")

    def start(self) -> Node:
        for node in NODES:
            for path in PATHS:
                self.at(node, path).mkdir(parents=True, exist_ok=True)
        master = self.pair.start(stagger_s=0.3)
        for node in NODES:
            self.start_sshd(node)
        wait_for("every path synced", lambda: all(
            p["state"] == "synced" for p in self.paths(master)), 20, lambda: self.paths(master))
        return master

    def start_sshd(self, node: Node) -> None:
        """The sync daemon as its unit would run it, with the agent's configuration (its
        parent directories here are a temporary tree: StrictModes off for that alone)."""
        config = self.root(node) / "etc/voxnode/sync/sshd_config"
        wait_for(f"the agent on {node} writes {config}", config.exists, 15)
        copy = self.lab.workdir / f"sshd-{node}.conf"
        copy.write_text(config.read_text().replace("StrictModes yes", "StrictModes no"))
        Path("/run/sshd").mkdir(exist_ok=True)
        log = self.lab.workdir / f"sshd-{node}.log"
        self.sshd[node] = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.ns[node], str(SSHD), "-D", "-e", "-f", str(copy)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
        proc = self.sshd[node]
        wait_for(f"the sync daemon on {node} listens", lambda: proc.poll() is not None or (
            ":7422 " in subprocess.run(["ip", "netns", "exec", self.lab.ns[node], "ss", "-Hltn"],
                                       capture_output=True, text=True, check=False).stdout),
            10, lambda: log.read_text(errors="replace")[-300:])
        if proc.poll() is not None:
            raise LabError(f"the sync daemon on {node} exited {proc.returncode}: "
                           f"{log.read_text(errors='replace')[-300:]}")

    def stop(self) -> None:
        self.pair.stop()
        for proc in self.sshd.values():
            proc.kill()

    def paths(self, node: Node) -> list[dict[str, object]]:
        data: list[dict[str, object]] = self.pair.client(node).get("/v1/replication")["paths"]
        return data


