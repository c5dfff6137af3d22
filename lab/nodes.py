"""The lab's members and how to reach them: which nodes there are, finding a node's
systemd-nspawn and its container's PID 1, running a command inside a node, probing a
node (container, addresses, agent, systemd), the lab's state file, and every process of
the lab that runs now (what ``down`` must stop).

Reads the host (``/proc``, the lab's namespaces) and changes nothing; ``lab.lifecycle``
starts and stops what is found here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import net
from lab.net import Member
from lab.util import (
    EXIT_INVALID,
    LabError,
    LabProcess,
    Paths,
    lab_process,
    run,
)

NODES = (Member("node1", "10.77.0.11"), Member("node2", "10.77.0.12"))
CLIENT = Member("client", "10.77.0.100")
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def member(name: str) -> Member:
    for node in NODES:
        if node.name == name:
            return node
    names = ", ".join(n.name for n in NODES)
    raise LabError(f"unknown node {name!r} (the lab has {names})", EXIT_INVALID)


# --- processes ------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def nspawn_pid(node: Member) -> int | None:
    """The host PID of the node's systemd-nspawn, found by its command line."""
    marker = f"--network-namespace-path={net.NETNS_DIR / node.netns}"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = _cmdline(int(entry))
            if argv and argv[0].endswith("systemd-nspawn") and marker in argv:
                return int(entry)
    return None


def container_pid(nspawn: int) -> int | None:
    """The container's PID 1 (systemd), as a host PID: the child of systemd-nspawn."""
    for task in Path(f"/proc/{nspawn}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                if Path(f"/proc/{child}/ns/pid").exists() and os.readlink(
                    f"/proc/{child}/ns/pid"
                ) != os.readlink("/proc/self/ns/pid"):
                    return int(child)
    return None


def node_command(leader: int, command: list[str], tty: bool = False) -> list[str]:
    """Argv that runs ``command`` inside the container whose PID 1 is ``leader``."""
    env = ["PATH=" + NODE_PATH, "HOME=/root", "LANG=C.UTF-8", "USER=root", "LOGNAME=root"]
    if tty:
        env.append("TERM=" + os.environ.get("TERM", "xterm"))
    return ["nsenter", f"--target={leader}", "--mount", "--uts", "--ipc", "--net", "--pid",
            "--root", "--wd", "/usr/bin/env", "-i", *env, *command]


def in_node(leader: int, command: list[str], timeout: float = 15.0) -> tuple[int, str]:
    """Run a command in a node and capture its output: (exit code, stdout)."""
    try:
        proc = subprocess.run(node_command(leader, command), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return 124, ""
    return proc.returncode, proc.stdout


# --- state ----------------------------------------------------------------------------------


@dataclass
class NodeProbe:
    name: str
    running: bool
    nspawn_pid: int | None
    leader_pid: int | None
    addresses: list[str]
    agent: bool
    revision: int | None
    hostname: str | None
    systemd: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def probe(node: Member) -> NodeProbe:
    pid = nspawn_pid(node)
    leader = container_pid(pid) if pid else None
    agent, revision, hostname, systemd = False, None, None, "-"
    if leader:
        code, out = in_node(leader, ["voxnode", "--json", "status"])
        if code == 0:
            agent = True
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = json.loads(out)
                hostname = data.get("hostname")
                revision = (data.get("revision") or {}).get("revision")
        _, out = in_node(leader, ["systemctl", "is-system-running"])
        systemd = out.strip() or "unknown"
    return NodeProbe(node.name, leader is not None, pid, leader,
                     net.addresses(node.netns), agent, revision, hostname, systemd)


def load_state(paths: Paths) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(paths.state_file.read_text())
        return data
    except (OSError, ValueError):
        return {}


def save_state(paths: Paths, state: dict[str, Any]) -> None:
    tmp = paths.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, paths.state_file)


# --- every process of the lab -------------------------------------------------------------


def container_pids(leader: int) -> list[int]:
    """Host PIDs of every process in the PID namespace whose init is ``leader``."""
    try:
        ns = os.readlink(f"/proc/{leader}/ns/pid")
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    pids.append(int(entry))
    return pids


def alive(pid: int) -> bool:
    """Whether ``pid`` runs now (a zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _recorded_nspawn(paths: Paths, node: Member) -> int | None:
    """The systemd-nspawn PID ``up``/``start`` recorded for ``node``, if that PID is still a
    systemd-nspawn: the command line search misses one that is exiting (its command line
    reads empty once its memory is released, while it still runs)."""
    recorded = load_state(paths).get("nodes", {}).get(node.name, {})
    pid, started = recorded.get("nspawn_pid"), recorded.get("nspawn_started")
    if not isinstance(pid, int) or not isinstance(started, int):
        return None
    # the same process as recorded (pid and start time), not whatever reuses the pid now:
    # a stale or edited state file must not aim the root `down` at another container
    process = lab_process(pid, node.name)
    return pid if (process is not None and process.name == "systemd-nspawn"
                   and process.started == started) else None


def lab_processes(paths: Paths) -> list[LabProcess]:
    """What of the lab runs now: each node's systemd-nspawn and every process of its
    container, and anything else inside a lab network namespace (a `lab exec` command, a
    helper a test started there)."""
    found: dict[int, LabProcess] = {}

    def add(pid: int, owner: str) -> None:
        if pid not in found and pid != os.getpid() and (p := lab_process(pid, owner)):
            found[pid] = p

    for node in NODES:
        nspawn = nspawn_pid(node) or _recorded_nspawn(paths, node)
        if nspawn is None:
            continue
        add(nspawn, node.name)
        leader = container_pid(nspawn)
        for pid in container_pids(leader) if leader else ():
            add(pid, f"{node.name}'s container")
    for ns in net.namespaces():
        for pid in net.pids_inside(ns):
            add(pid, ns)
    return sorted(found.values(), key=lambda p: p.pid)


def registered_machines() -> list[str]:
    """Lab nodes systemd-machined lists (``machinectl list``). The lab boots its nodes with
    ``--register=no``, but on a host whose PID 1 is systemd a node registered by other
    means stays listed until its nspawn has gone; without systemd there is nothing to ask."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("machinectl") is None:
        return []
    proc = run(["machinectl", "list", "--no-legend", "--no-pager"], check=False, timeout=10)
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    return sorted(n.name for n in NODES if n.name in listed) if proc.returncode == 0 else []


