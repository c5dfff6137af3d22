"""A pair replicating both a database and paths, with each node's sync daemon: what the full
sync tests and the replication benchmark's full-sync case share (``lab.pair.dbpair``'s
servers, ``lab.pair.filepair``'s daemons, on one ``VoxnodePair``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from lab.pair import mariadb as labdb
from lab.pair.dbpair import DbPair
from lab.pair.filepair import FilePair
from lab.pair.harness import PairLab
from lab.pair.topology import NODES, LabError, Node, other
from lab.pair.voxnode import VoxnodePair

PATHS = ["/srv/rec", "/srv/vm"]
SOCKET = "/run/mysqld/mysqld.sock"


def extra_ha(bandwidth_kb: int) -> dict[str, Any]:
    return {"replication": {"database": {"engine": "mariadb", "socket": SOCKET},
                            "paths": PATHS, "bandwidth_kb": bandwidth_kb, "max_lag_s": 5}}


class SyncPair:
    """Databases and files: DbPair's servers and FilePair's sync daemons on one pair."""

    def __init__(self, pair: VoxnodePair) -> None:
        self.pair = pair
        self.db = DbPair(pair)
        self.files = FilePair(pair)

    def up(self) -> Node:
        for node in NODES:
            for path in PATHS:
                self.files.at(node, path).mkdir(parents=True, exist_ok=True)
        master = self.pair.start(stagger_s=0.3)
        for node in NODES:
            self.db.start_server(node)
            self.files.start_sshd(node)
        self.db.wait_state(master, "master")
        self.db.wait_state(other(master), "replicating")
        self.db.schema(master)
        return master

    def job(self, node: Node, job_id: int) -> dict[str, Any]:
        data: dict[str, Any] = self.pair.client(node).get(f"/v1/jobs/{job_id}")
        return data

    def start_sync(self, node: Node, what: str = "all") -> dict[str, Any]:
        data: dict[str, Any] = self.pair.client(node).post("/v1/ha/full-sync", {"what": what})
        return data

    def follow(self, node: Node, job_id: int, *, until: Any = None,
               timeout: float = 120) -> tuple[dict[str, Any], list[int]]:
        """Poll the job as an operator's console would; (the job when ``until(job)`` holds
        or when it ended, every progress seen)."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(node, job_id)
            seen.append(job["progress"])
            if (until is not None and until(job)) or job["state"] not in (
                    "scheduled", "running"):
                return job, seen
            if time.monotonic() > deadline:
                raise LabError(f"job {job_id} on {node} still {job['state']} after "
                               f"{timeout:g} s: {job}")
            time.sleep(0.1)

    def replication(self, node: Node) -> dict[str, Any]:
        data: dict[str, Any] = self.pair.client(node).get("/v1/replication")
        return data

    def stop(self) -> None:
        self.files.stop()
        for server in self.db.servers.values():
            server.kill()


@contextlib.contextmanager
def sync_pair(bandwidth_kb: int = 100000) -> Iterator[SyncPair]:
    """A fresh lab with the pair (not yet up: call ``up``); LabError if MariaDB is missing.
    At the end, neither agent may have stalled its event loop."""
    missing = labdb.missing_tools()
    if missing:
        raise LabError(f"MariaDB missing: {', '.join(missing)} (make apt)")
    with PairLab(assign_node_addresses=False, probe=False) as lab:
        voxnode = VoxnodePair(lab, extra_ha=extra_ha(bandwidth_kb))
        pair = SyncPair(voxnode)
        try:
            yield pair
        finally:
            pair.stop()
        problems = voxnode.loop_problems()
        if problems:
            raise LabError("an agent stalled its event loop:\n" + "\n".join(problems))
