"""Two real agents and two real MariaDB servers in the pair lab (``tests/netns``,
``bench/replication``): what the database tests and the replication benchmark share.

``DbPair`` starts each node's server the way systemd would once the agent wrote its
drop-in (``lab.pair.mariadb.DbServer`` with the agent's own settings and TLS files), reads
the agents' view of their database, makes the PBX schema and counts rows. ``Writer`` runs
``lab.pair.dbwriter`` processes in the client namespace, through the node IP, and reads
back the rows the server acknowledged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab.pair.harness import PairLab
from lab.pair.mariadb import DbServer
from lab.pair.topology import NODE_IP, NODES, LabError, Node, other
from lab.pair.voxnode import VoxnodePair

REPO = Path(__file__).resolve().parents[2]
SOCKET = "/run/mysqld/mysqld.sock"  # the node path the agents are told
DROP_IN = "etc/my.cnf.d/90-voxnode-replication.cnf"
EXTRA_HA = {"replication": {"database": {"engine": "mariadb", "socket": SOCKET},
                            "max_lag_s": 5}}


class DbPair:
    """Two agents and their two database servers."""

    def __init__(self, pair: VoxnodePair) -> None:
        self.pair = pair
        self.lab = pair.lab
        self.servers: dict[Node, DbServer] = {}

    def root(self, node: Node) -> Path:
        return self.pair.dir(node) / "root"

    def server(self, node: Node) -> DbServer:
        return self.servers[node]

    def start_server(self, node: Node, *, install: bool = True) -> DbServer:
        """The server as systemd would start it once the agent wrote its drop-in."""
        drop_in = self.root(node) / DROP_IN
        wait_for(f"the agent on {node} writes {DROP_IN}", drop_in.exists, 15)
        server = self.servers.get(node) or DbServer(
            self.lab.ns[node], self.lab.workdir / f"db-{node}", drop_in.read_text(),
            socket=self.root(node) / SOCKET.lstrip("/"))
        server.drop_in = drop_in.read_text()
        if install:
            server.install()
        server.start()
        self.servers[node] = server
        return server

    def database(self, node: Node) -> dict[str, Any]:
        data = self.pair.status(node)
        if data is None:
            raise LabError(f"no status from the agent of {node}")
        db: dict[str, Any] = data["database"]
        return db

    def wait_state(self, node: Node, state: str, timeout: float = 15) -> dict[str, Any]:
        wait_for(f"the database of {node} is {state}",
                 lambda: (self.pair.status(node) or {}).get("database", {}).get("state")
                 == state, timeout,
                 lambda: str((self.pair.status(node) or {}).get("database")))
        return self.database(node)

    def schema(self, master: Node) -> None:
        """The PBX's schema and its client account, made on the master (replicated)."""
        self.server(master).sql(
            "CREATE DATABASE pbx; CREATE TABLE pbx.calls (id BIGINT PRIMARY KEY "
            "AUTO_INCREMENT, seq BIGINT NOT NULL, at DATETIME(6)) ENGINE=InnoDB; "
            "CREATE USER pbx@'10.88.0.%' IDENTIFIED BY 'pbx'; "
            "GRANT SELECT, INSERT ON pbx.* TO pbx@'10.88.0.%'; "
            "CREATE USER report@'%' IDENTIFIED BY 'report'; "
            "GRANT SELECT, INSERT ON pbx.* TO report@'%'")

    def up(self) -> Node:
        """Agents, then servers; the master writable, the slave replicating, the schema on
        both. The master."""
        master = self.pair.start(stagger_s=0.3)
        for node in NODES:
            self.start_server(node)
        self.wait_state(master, "master")
        self.wait_state(other(master), "replicating")
        self.schema(master)
        wait_for("the schema reaches the slave", lambda: self.server(other(master)).sql(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='pbx'",
            check=False) == "1", 10)
        return master

    def ids(self, node: Node) -> set[int]:
        text = self.server(node).sql("SELECT id FROM pbx.calls")
        return {int(x) for x in text.split()}


def wait_for(what: str, check: Any, timeout: float, detail: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            extra = f": {detail()}" if detail is not None else ""
            raise LabError(f"timed out waiting until {what}{extra}")
        time.sleep(0.1)


class Writer:
    """``lab.pair.dbwriter`` in the client namespace, through ``host`` (the node IP):
    ``clients`` processes sharing ``rate`` rows per second."""

    def __init__(self, lab: PairLab, rate: float = 200.0, *, clients: int = 1,
                 host: str = NODE_IP) -> None:
        stamp = time.monotonic_ns()
        self.logs = [lab.workdir / f"writer-{stamp}-{i}.log" for i in range(clients)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.procs = []
        for log in self.logs:
            with log.open("wb") as fh:
                self.procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", lab.ns["c"], sys.executable, "-m",
                     "lab.pair.dbwriter", "--host", host, "--rate", str(rate / clients)],
                    stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO))

    def lines(self) -> list[str]:
        return [line for log in self.logs for line in log.read_text().splitlines()]

    def acknowledged(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.startswith("ok ")]

    def acks(self) -> list[tuple[int, float]]:
        """(row id, monotonic time of the acknowledgement), in time order."""
        found = [(int(p[1]), float(p[3])) for p in (line.split() for line in self.lines())
                 if p and p[0] == "ok" and len(p) >= 4]
        return sorted(found, key=lambda a: a[1])

    def errors(self) -> list[str]:
        return [line for line in self.lines() if line.startswith("error")]

    def wait_rows(self, count: int, timeout: float = 20) -> None:
        start = len(self.acknowledged())
        wait_for(f"{count} more acknowledged rows", lambda: len(self.acknowledged()) >= start
                 + count, timeout, lambda: self.errors()[-3:])

    def stop(self) -> list[int]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=10)
        return self.acknowledged()


