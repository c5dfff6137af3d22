"""`voxnode-lab`: a two-node lab of systemd-nspawn containers on one isolated LAN.

Owns the lab's life cycle: ``up`` (build or reuse the cached rootfs, make the network,
boot ``node1`` and ``node2``, wait until both agents answer), ``down`` (stop everything,
wait, bounded, until every process of the lab has exited, verify nothing is left),
``status`` and getting into a node (``shell``, ``exec``); for failover tests, ``crash``
(kill one node at once, leaving its network namespace and disk) and ``start`` (boot it
again on its disk).

Each node is ``systemd-nspawn --boot --register=no --keep-unit`` (the host has no systemd
as PID 1 and no D-Bus) joined to its own network namespace, on an overlay of the cached
rootfs layers with a fresh writable upper directory per ``up``. The node's address and
hostname come from the seed document written to ``/etc/voxnode/seed.yaml``, which the
agent applies as revision 1 at first start. What runs is recorded in ``out/lab/state.json``;
``down`` also finds the lab's processes by their namespaces, so a lost state file leaves
nothing behind.

Run as ``voxnode-lab …`` (the development tools' entry point) or ``python -m lab …``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from lab import net, rootfs
from lab.net import Member
from lab.util import (
    EXIT_BOOT,
    EXIT_FAILED,
    EXIT_NOT_ROOT,
    EXIT_NOT_UP,
    EXIT_OK,
    EXIT_UNKNOWN_NODE,
    EXIT_USAGE,
    LabError,
    LabProcess,
    Paths,
    is_mounted,
    lab_process,
    locked,
    run,
    say,
    step,
    still_running_error,
    stop_processes,
    tail,
    umount,
)

NODES = (Member("node1", "10.77.0.11"), Member("node2", "10.77.0.12"))
CLIENT = Member("client", "10.77.0.100")
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0  # a node's clean power-off after SIGTERM to its systemd-nspawn
KILL_TIMEOUT_S = 10.0  # the lab's processes gone after SIGKILL (a pid namespace's init waits
# for every process in it to be reaped before it exits)
TUN_DRIVER = Path("/sys/class/misc/tun")
HOST_TOOLS = ("mmdebstrap", "systemd-nspawn", "nsenter", "ip", "mount", "systemctl")


def seed_document(node: Member) -> str:
    return (
        "# written by `voxnode-lab up`: the agent applies it as revision 1 at first start\n"
        "schema_version: 1\n"
        "network:\n"
        f"  hostname: {node.name}\n"
        "  interfaces:\n"
        f"    eth0: {{addresses: [{node.address}/{net.PREFIXLEN}], dhcp: false}}\n"
        f"  gateway: {net.GATEWAY}\n"
        "mode: standard\n"
    )


def member(name: str) -> Member:
    for node in NODES:
        if node.name == name:
            return node
    names = ", ".join(n.name for n in NODES)
    raise LabError(f"unknown node {name!r} (the lab has {names})", EXIT_UNKNOWN_NODE)


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


def _load_state(paths: Paths) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(paths.state_file.read_text())
        return data
    except (OSError, ValueError):
        return {}


def _save_state(paths: Paths, state: dict[str, Any]) -> None:
    tmp = paths.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, paths.state_file)


# --- up -------------------------------------------------------------------------------------


def _prepare_root(paths: Paths, node: Member, fs: rootfs.Rootfs) -> Path:
    base = paths.nodes / node.name
    upper, work, root = base / "upper", base / "work", base / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True)
    etc = upper / "etc"
    (etc / "voxnode").mkdir(parents=True)
    (etc / "voxnode" / "seed.yaml").write_text(seed_document(node))
    (etc / "hostname").write_text(node.name + "\n")
    (etc / "hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        + "".join(f"{n.address}\t{n.name}\n" for n in NODES)
        + f"{CLIENT.address}\t{CLIENT.name}\n{net.GATEWAY}\tgateway\n"
    )
    (etc / "machine-id").write_text(os.urandom(16).hex() + "\n")
    run(["mount", "-t", "overlay", f"vxlab-{node.name}", "-o",
         f"lowerdir={fs.lowerdir},upperdir={upper},workdir={work}", root])
    return root


def _boot(paths: Paths, node: Member, root: Path, append: bool = False) -> int:
    log = paths.node_log(node.name)
    cmd = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", f"--machine={node.name}",
           f"--directory={root}", f"--network-namespace-path={net.NETNS_DIR / node.netns}",
           # the agent owns eth0's addresses and routes
           "--capability=CAP_NET_ADMIN",
           "--console=read-only", "--link-journal=no", "--resolv-conf=off", "--timezone=off"]
    with log.open("a" if append else "w") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc.pid


def _wait_agents(paths: Paths, timeout: float,
                 nodes: tuple[Member, ...] = NODES) -> list[NodeProbe]:
    deadline = time.monotonic() + timeout
    waiting = list(nodes)
    probes: dict[str, NodeProbe] = {}
    while waiting:
        for node in list(waiting):
            p = probe(node)
            if p.nspawn_pid is None or not _alive(p.nspawn_pid):
                log = paths.node_log(node.name)
                raise LabError(f"{node.name} stopped while booting (log {log})",
                               EXIT_BOOT, detail=tail(log, 20))
            if p.agent and p.revision is not None:
                probes[node.name] = p
                waiting.remove(node)
                say(f"    {node.name}: agent answers (systemd {p.systemd}, revision {p.revision})")
        if waiting and time.monotonic() > deadline:
            node = waiting[0]
            pid = nspawn_pid(node)
            leader = container_pid(pid) if pid else None
            journal = ""
            if leader:
                _, journal = in_node(leader, ["journalctl", "-b", "--no-pager", "-n", "15",
                                              "-u", "voxnode-agent.service"])
            what = ("answers but has no revision (was the seed refused?)"
                    if probe(node).agent else "did not answer")
            raise LabError(
                f"{node.name}: the agent {what} within {timeout:.0f} s "
                f"(node log {paths.node_log(node.name)}; the lab is left running for a "
                f"look: `voxnode-lab shell {node.name}`, then `make lab-down`)", EXIT_BOOT,
                detail=tail(paths.node_log(node.name), 12)
                + ("\n--- journal of voxnode-agent.service ---\n" + journal.rstrip()
                   if journal else ""))
        if waiting:
            time.sleep(0.5)
    return [probes[n.name] for n in nodes]


def usage_text(probes: list[NodeProbe]) -> str:
    lines = ["", "The lab is up (bridge 10.77.0.1 in netns vxlab-br, no route out):"]
    for p, node in zip(probes, NODES, strict=True):
        lines.append(f"  {p.name}: {node.address}  (netns {node.netns}, "
                     f"revision {p.revision}, systemd {p.systemd})")
    lines.append(f"  client: {CLIENT.address}  (netns {CLIENT.netns})")
    lines += [
        "",
        "Use it:",
        "  .venv/bin/voxnode-lab shell node1                       # a root shell on node1",
        "  .venv/bin/voxnode-lab exec node1 -- voxnode status      # one command, exit code kept",
        "  .venv/bin/voxnode-lab exec node2 -- journalctl -u voxnode-agent -f",
        f"  ip netns exec {CLIENT.netns} ping {NODES[0].address}              # from the client",
        "  .venv/bin/voxnode-lab status [--json]",
        "  make lab-down                                            # remove everything",
    ]
    return "\n".join(lines)


def ensure_tun() -> None:
    """The nodes' OpenVPN (the MCS client) needs the host's tun driver: systemd-nspawn gives
    every node its own /dev/net/tun, which opens only when the driver is loaded."""
    if not TUN_DRIVER.exists() and shutil.which("modprobe"):
        run(["modprobe", "tun"], check=False)
    if not TUN_DRIVER.exists():
        raise LabError("the host has no tun driver (needed by OpenVPN in the nodes): load it "
                       "with `modprobe tun`", EXIT_NOT_ROOT)


def up(paths: Paths, timeout: float) -> int:
    ensure_tun()
    current = {n.name: probe(n) for n in NODES}
    complete = all(p.running and p.agent for p in current.values()) and all(
        net.exists(m.netns) for m in (*NODES, CLIENT))
    if complete:
        say("The lab is already up.")
        if _load_state(paths).get("rootfs") != rootfs.keys()["agent"]:
            say("note: the sources changed since it started; `lab down` then `lab up` to "
                "run the new rootfs.")
        say(usage_text(list(current.values())))
        return EXIT_OK
    if any(p.running for p in current.values()) or net.namespaces() or paths.state_file.exists():
        say("==> a previous lab is partly up: removing it first")
        down(paths, quiet=True)
    started = time.monotonic()
    fs = rootfs.ensure(paths)
    state: dict[str, Any] = {"rootfs": fs.key, "layers": [str(p) for p in fs.layers],
                             "started": time.time(), "nodes": {}}
    _save_state(paths, state)
    with step("network: bridge 10.77.0.1/24 and namespaces for node1, node2, client"):
        net.create_bridge()
        for node in NODES:
            net.attach(node, configure=False)
        net.attach(CLIENT, configure=True)
    with step("booting node1 and node2 (systemd-nspawn)"):
        for node in NODES:
            root = _prepare_root(paths, node, fs)
            pid = _boot(paths, node, root)
            state["nodes"][node.name] = {"nspawn_pid": pid, "root": str(root),
                                         "log": str(paths.node_log(node.name))}
            _save_state(paths, state)
    with step(f"waiting for both agents to answer (up to {timeout:.0f} s)"):
        probes = _wait_agents(paths, timeout)
    say(f"lab up in {time.monotonic() - started:.1f} s")
    say(usage_text(probes))
    return EXIT_OK


# --- crash and start one node ---------------------------------------------------------------


def _container_pids(leader: int) -> list[int]:
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


def crash(name: str, paths: Paths | None = None) -> float:
    """Kill a node the way a machine dies: freeze (SIGSTOP) its systemd-nspawn and every
    process of the container, then SIGKILL them all. Nothing runs a stop or an exit path
    (freezing first keeps a dying parent from telling anyone), so the agent releases
    nothing and says goodbye to nobody.

    What stays is what a hung machine leaves on the LAN: the node's network namespace, so
    its kernel keeps eth0 and every address on it (a node IP included) and still answers
    ARP; and its root (the disk), so ``start`` boots it again with its state. Returns the
    monotonic time of the freeze.
    """
    node = member(name)
    paths = paths or Paths.default()
    with locked(paths.out / "lock"):
        nspawn = nspawn_pid(node)
        leader = container_pid(nspawn) if nspawn else None
        if nspawn is None or leader is None:
            raise LabError(f"{node.name} is not running", EXIT_NOT_UP)
        victims = [nspawn, *(p for p in _container_pids(leader) if p != os.getpid())]
        at = time.monotonic()
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(_alive(p) for p in victims):
            if time.monotonic() > deadline:
                raise LabError(f"{node.name}: processes survived SIGKILL: "
                               f"{[p for p in victims if _alive(p)]}")
            time.sleep(0.02)
        state = _load_state(paths)
        if node.name in state.get("nodes", {}):
            state["nodes"][node.name].update(nspawn_pid=None, crashed=time.time())
            _save_state(paths, state)
    return at


def start(name: str, paths: Paths | None = None, timeout: float = UP_TIMEOUT_S) -> NodeProbe:
    """Boot a node of a running lab again (after ``crash``) on its own root: the upper
    directory kept since ``up`` is its disk, so its configuration, pair key and failover
    state survive, like a machine powered on again. Waits until its agent answers."""
    node = member(name)
    paths = paths or Paths.default()
    with locked(paths.out / "lock"):
        if nspawn_pid(node) is not None:
            raise LabError(f"{node.name} is already running", EXIT_FAILED)
        root = paths.nodes / node.name / "root"
        if not net.exists(node.netns) or not is_mounted(root):
            raise LabError(f"{node.name} has no network namespace or root: the lab is not "
                           "up (`voxnode-lab up` starts it)", EXIT_NOT_UP)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{node.name}", ignore_errors=True)
        pid = _boot(paths, node, root, append=True)
        state = _load_state(paths)
        state.setdefault("nodes", {}).setdefault(node.name, {}).update(
            nspawn_pid=pid, crashed=None)
        _save_state(paths, state)
        return _wait_agents(paths, timeout, (node,))[0]


# --- down -----------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _recorded_nspawn(paths: Paths, node: Member) -> int | None:
    """The systemd-nspawn PID ``up``/``start`` recorded for ``node``, if that PID is still a
    systemd-nspawn: the command line search misses one that is exiting (its command line
    reads empty once its memory is released, while it still runs)."""
    pid = _load_state(paths).get("nodes", {}).get(node.name, {}).get("nspawn_pid")
    if not isinstance(pid, int):
        return None
    process = lab_process(pid, node.name)
    return pid if process is not None and process.name == "systemd-nspawn" else None


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
        for pid in _container_pids(leader) if leader else ():
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


def _wait_processes(paths: Paths) -> None:
    """Stop every process of the lab and wait, bounded, until they are gone and no node is
    listed by machinectl: SIGTERM to each systemd-nspawn (it powers its container off),
    then SIGKILL to whatever is left or appeared meanwhile. Raises naming what still runs."""
    tracked = lab_processes(paths)
    nspawns = [p for p in tracked if p.name == "systemd-nspawn" and p.owner in
               {n.name for n in NODES}]
    if nspawns:
        with step(f"stopping {', '.join(p.owner for p in nspawns)}"):
            left = stop_processes(nspawns, signal.SIGTERM, STOP_TIMEOUT_S)
            for p in left:
                say(f"    {p.describe()} still running after {STOP_TIMEOUT_S:.0f} s: SIGKILL")
    left = stop_processes(tracked, signal.SIGKILL, KILL_TIMEOUT_S,
                          scan=lambda: lab_processes(paths))
    if left:
        raise still_running_error(left, KILL_TIMEOUT_S)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while (machines := registered_machines()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if machines:
        raise LabError(f"lab down: machinectl still lists {', '.join(machines)} "
                       f"{KILL_TIMEOUT_S:.0f} s after its processes ended; nothing was removed "
                       "(`machinectl terminate NAME`, then `make lab-down` again)")


def down(paths: Paths, quiet: bool = False) -> int:
    started = time.monotonic()
    _wait_processes(paths)
    for node in NODES:
        base = paths.nodes / node.name
        umount(base / "root")
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{node.name}", ignore_errors=True)
    for ns in net.namespaces():
        net.delete(ns)
    with contextlib.suppress(FileNotFoundError):
        paths.state_file.unlink()
    problems = []
    if left := lab_processes(paths):
        problems.append(f"processes still running: {', '.join(p.describe() for p in left)}")
    if net.namespaces():
        problems.append(f"namespaces still present: {net.namespaces()}")
    mounted = [n.name for n in NODES if (paths.nodes / n.name / "root").exists()]
    if mounted:
        problems.append(f"node roots still present: {mounted}")
    if problems:
        raise LabError("lab down left things behind: " + "; ".join(problems))
    if not quiet:
        say(f"The lab is down (nothing left; {time.monotonic() - started:.1f} s).")
    return EXIT_OK


# --- status, shell, exec --------------------------------------------------------------------


def status(as_json: bool) -> int:
    probes = [probe(n) for n in NODES]
    client_addresses = net.addresses(CLIENT.netns)
    client_ns = net.exists(CLIENT.netns)
    client = {"netns": client_ns, "addresses": client_addresses}
    bridge = {"netns": net.exists(net.BRIDGE_NS),
              "addresses": net.addresses(net.BRIDGE_NS, net.BRIDGE)}
    healthy = all(p.running and p.agent for p in probes) and client_ns
    if as_json:
        print(json.dumps({"up": healthy, "nodes": {p.name: p.as_dict() for p in probes},
                          "client": client, "bridge": bridge}, indent=2))
    else:
        rows = [("node", "container", "pid", "address", "agent", "revision", "systemd")]
        for p in probes:
            rows.append((p.name, "running" if p.running else "stopped",
                         str(p.leader_pid or "-"), ",".join(p.addresses) or "-",
                         "answers" if p.agent else "no", str(p.revision or "-"), p.systemd))
        rows.append(("client", "netns" if client_ns else "absent", "-",
                     ",".join(client_addresses) or "-", "-", "-", "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        print("lab: " + ("up" if healthy else "down" if not any(p.running for p in probes)
                         else "degraded"))
    return EXIT_OK if healthy else EXIT_FAILED


def enter(name: str, command: list[str], tty: bool) -> int:
    node = member(name)
    pid = nspawn_pid(node)
    leader = container_pid(pid) if pid else None
    if leader is None:
        raise LabError(f"{node.name} is not running (start the lab with `make lab`)", EXIT_NOT_UP)
    argv = node_command(leader, command, tty=tty)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command gets ^C itself
    try:
        code = subprocess.call(argv)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - code if code < 0 else code


# --- command line ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="voxnode-lab",
        description="A two-node lab: node1 and node2 are systemd-nspawn containers booting the "
        "lab rootfs (Debian 12 + the agent), on the LAN 10.77.0.0/24 with a client namespace.",
        epilog="exit status: 0 ok; 1 failed (status: lab not fully up); 2 usage; 3 unknown "
        "node; 4 not root or host tool missing; 5 node not running; 6 rootfs build failed; "
        "7 a node did not come up. `exec` returns the command's own exit status.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    up_p = sub.add_parser("up", help="build (cached) and start the lab; waits for both agents")
    up_p.add_argument("--timeout", type=float, default=UP_TIMEOUT_S,
                      help=f"seconds to wait for the agents (default {UP_TIMEOUT_S:.0f})")
    sub.add_parser("down", help="stop and remove everything the lab made")
    st = sub.add_parser("status", help="containers, addresses, agents, systemd state")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sh = sub.add_parser("shell", help="a login shell inside a node")
    sh.add_argument("node")
    cr = sub.add_parser("crash", help="freeze and kill every process of a node at once (a "
                        "machine dying); its network namespace and disk stay")
    cr.add_argument("node")
    sr = sub.add_parser("start", help="boot a crashed node again on its own disk; waits for "
                        "its agent")
    sr.add_argument("node")
    sr.add_argument("--timeout", type=float, default=UP_TIMEOUT_S,
                    help=f"seconds to wait for the agent (default {UP_TIMEOUT_S:.0f})")
    ex = sub.add_parser("exec", help="run a command inside a node: exec NODE -- CMD...")
    ex.add_argument("node")
    ex.add_argument("cmd", nargs="*", metavar="-- CMD", help="the command and its arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `exec NODE -- CMD...`: everything after the first `--` is the command, untouched
    command: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = parser().parse_args(argv)
    paths = Paths.default()
    try:
        if args.command == "exec":
            if command is None or args.cmd or not command:
                raise LabError("usage: voxnode-lab exec NODE -- CMD [ARGS...] (the `--` is "
                               "required)", EXIT_USAGE)
            member(args.node)
        elif command is not None:
            raise LabError(f"`--` is only valid with exec, not {args.command}", EXIT_USAGE)
        if args.command in ("shell", "crash", "start"):
            member(args.node)
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, mounts, nspawn): "
                           "run it with sudo", EXIT_NOT_ROOT)
        if args.command == "up":
            missing = [t for t in rootfs_tools() if shutil.which(t) is None]
            if missing:
                raise LabError(f"missing host tools: {', '.join(missing)} (`make lab` installs "
                               "them)", EXIT_NOT_ROOT)
            with locked(paths.out / "lock"):
                return up(paths, args.timeout)
        if args.command == "down":
            with locked(paths.out / "lock"):
                return down(paths)
        if args.command == "status":
            return status(args.json)
        if args.command == "crash":
            crash(args.node, paths)
            say(f"{args.node} crashed (its network namespace and disk stay; "
                f"`voxnode-lab start {args.node}` boots it again)")
            return EXIT_OK
        if args.command == "start":
            p = start(args.node, paths, args.timeout)
            say(f"{p.name} is up again (revision {p.revision}, systemd {p.systemd})")
            return EXIT_OK
        if args.command == "shell":
            shell = ["/bin/bash", "-l"]
            if sys.stdin.isatty():  # a pty of the node's own devpts, so `tty`, sudo, less work
                shell = ["/usr/bin/script", "-qfec", "/bin/bash -l", "/dev/null"]
            return enter(args.node, shell, tty=True)
        assert command is not None
        return enter(args.node, command, tty=sys.stdin.isatty())
    except LabError as exc:
        print(f"voxnode-lab: error: {exc.message}", file=sys.stderr)
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("voxnode-lab: interrupted", file=sys.stderr)
        return 130


def rootfs_tools() -> tuple[str, ...]:
    return HOST_TOOLS


if __name__ == "__main__":
    sys.exit(main())
