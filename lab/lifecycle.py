"""`voxnode-lab`: a two-node lab of systemd-nspawn containers on one isolated LAN.

Owns the lab's life cycle: ``up`` (build or reuse the cached rootfs, make the network,
boot ``node1`` and ``node2``, wait until both agents answer, then make them the appliance:
a licensed pair, ``lab.appliance``; ``up --standalone`` stops at two bare nodes), ``down``
(stop everything, wait, bounded, until every process of the lab has exited, verify nothing
is left); for failover tests, ``crash`` (kill one node at once, leaving its network
namespace and disk) and ``start`` (boot it again on its disk).

Each node is ``systemd-nspawn --boot --register=no --keep-unit`` (the host has no systemd
as PID 1 and no D-Bus) joined to its own network namespace, on an overlay of the cached
rootfs layers with a fresh writable upper directory per ``up``. The node's address and
hostname come from the seed document written to ``/etc/voxnode/seed.yaml``, which the
agent applies as revision 1 at first start. What runs is recorded in ``out/lab/state.json``;
``down`` also finds the lab's processes by their namespaces (``lab.nodes``), so a lost
state file leaves nothing behind. The command line is ``lab.cli``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab import net, rootfs
from lab.net import Member
from lab.nodes import (
    CLIENT,
    NODES,
    NodeProbe,
    alive,
    container_pid,
    container_pids,
    in_node,
    lab_processes,
    load_state,
    member,
    nspawn_pid,
    probe,
    registered_machines,
    save_state,
)
from lab.util import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    LabError,
    Paths,
    is_mounted,
    locked,
    run,
    say,
    started_at,
    step,
    still_running_error,
    stop_processes,
    tail,
    umount,
)

UP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0  # a node's clean power-off after SIGTERM to its systemd-nspawn
KILL_TIMEOUT_S = 10.0  # the lab's processes gone after SIGKILL (a pid namespace's init waits
# for every process in it to be reaped before it exits)
TUN_DRIVER = Path("/sys/class/misc/tun")


def seed_document(node: Member) -> str:
    return (
        "# written by `voxnode-lab up`: the agent applies it as revision 1 at first start\n"
        "schema_version: 2\n"
        "network:\n"
        f"  hostname: {node.name}\n"
        "  interfaces:\n"
        f"    eth0: {{addresses: [{node.address}/{net.PREFIXLEN}], dhcp: false}}\n"
        f"  gateway: {net.GATEWAY}\n"
        "mode: standard\n"
    )


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
            if p.nspawn_pid is None or not alive(p.nspawn_pid):
                log = paths.node_log(node.name)
                raise LabError(f"{node.name} stopped while booting (log {log})",
                               EXIT_UNREACHABLE, detail=tail(log, 20))
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
                f"look: `voxnode-lab shell {node.name}`, then `make lab-down`)", EXIT_UNREACHABLE,
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
                       "with `modprobe tun`", EXIT_REFUSED)


def up(paths: Paths, timeout: float, standalone: bool = False) -> int:
    """Start the lab: the appliance (a licensed pair, ``lab.appliance``), or with
    ``standalone`` two bare nodes (unlicensed, unpaired, revision 1)."""
    ensure_tun()
    mode = "standalone" if standalone else "appliance"
    current = {n.name: probe(n) for n in NODES}
    complete = all(p.running and p.agent for p in current.values()) and all(
        net.exists(m.netns) for m in (*NODES, CLIENT))
    previous = load_state(paths)
    degraded: list[str] = []
    if complete and mode == "appliance" and previous.get("mode") == mode and previous.get(
            "master"):
        from lab import appliance

        degraded = appliance.status(previous)["problems"]
    if degraded:
        say(f"==> the lab runs, but degraded ({'; '.join(degraded)}): removing it first")
        down(paths, quiet=True)
    elif complete and previous.get("mode", "standalone") == mode and (
            standalone or previous.get("master")):
        say(f"The lab is already up ({mode}).")
        if previous.get("rootfs") != rootfs.keys()["agent"]:
            say("note: the sources changed since it started; `lab down` then `lab up` to "
                "run the new rootfs.")
        say(usage_text(list(current.values())))
        if not standalone:
            from lab import appliance

            say(appliance.pair_text())
        return EXIT_OK
    elif complete and previous.get("mode") == mode:
        say(f"==> the lab's {mode} did not finish starting: removing it first")
        down(paths, quiet=True)
    elif complete:
        say(f"==> the lab runs, but not as {mode}: removing it first")
        down(paths, quiet=True)
    elif any(p.running for p in current.values()) or net.namespaces() or \
            paths.state_file.exists():
        say("==> a previous lab is partly up: removing it first")
        down(paths, quiet=True)
    started = time.monotonic()
    fs = rootfs.ensure(paths)
    state: dict[str, Any] = {"rootfs": fs.key, "layers": [str(p) for p in fs.layers],
                             "started": time.time(), "mode": mode, "nodes": {}}
    save_state(paths, state)
    with step("network: bridge 10.77.0.1/24 and namespaces for node1, node2, client"):
        net.create_bridge()
        for node in NODES:
            net.attach(node, configure=False)
        net.attach(CLIENT, configure=True)
    with step("booting node1 and node2 (systemd-nspawn)"):
        for node in NODES:
            root = _prepare_root(paths, node, fs)
            pid = _boot(paths, node, root)
            state["nodes"][node.name] = {"nspawn_pid": pid, "nspawn_started": started_at(pid),
                                         "root": str(root),
                                         "log": str(paths.node_log(node.name))}
            save_state(paths, state)
    if standalone:
        with step(f"waiting for both agents to answer (up to {timeout:.0f} s)"):
            probes = _wait_agents(paths, timeout)
        say(f"lab up in {time.monotonic() - started:.1f} s")
        say(usage_text(probes))
        return EXIT_OK
    from lab import appliance  # the venv's (the vendor key, the licence server)

    with ThreadPoolExecutor(max_workers=1) as pool:
        # the vendor starts while the nodes boot (it needs nothing of them)
        vendor = pool.submit(appliance.prepare, paths, state, lambda s: save_state(paths, s))
        try:
            with step(f"waiting for both agents to answer (up to {timeout:.0f} s); the "
                      "vendor's licence server and mail sink meanwhile"):
                _wait_agents(paths, timeout)
        except BaseException:
            with contextlib.suppress(Exception):  # the nodes' error is the one to tell
                vendor.result()  # (and its servers are recorded for `lab down`)
            raise
        sold = vendor.result()
    appliance.configure(paths, state, lambda s: save_state(paths, s), sold)
    say(f"lab up in {time.monotonic() - started:.1f} s")
    say(usage_text([probe(n) for n in NODES]))
    say(appliance.pair_text())
    return EXIT_OK


# --- crash and start one node ---------------------------------------------------------------


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
            raise LabError(f"{node.name} is not running", EXIT_UNREACHABLE)
        victims = [nspawn, *(p for p in container_pids(leader) if p != os.getpid())]
        at = time.monotonic()
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(alive(p) for p in victims):
            if time.monotonic() > deadline:
                raise LabError(f"{node.name}: processes survived SIGKILL: "
                               f"{[p for p in victims if alive(p)]}")
            time.sleep(0.02)
        state = load_state(paths)
        if node.name in state.get("nodes", {}):
            state["nodes"][node.name].update(nspawn_pid=None, crashed=time.time())
            save_state(paths, state)
    return at


def start(name: str, paths: Paths | None = None, timeout: float = UP_TIMEOUT_S) -> NodeProbe:
    """Boot a node of a running lab again (after ``crash``) on its own root: the upper
    directory kept since ``up`` is its disk, so its configuration, pair key and failover
    state survive, like a machine powered on again. Waits until its agent answers."""
    node = member(name)
    paths = paths or Paths.default()
    with locked(paths.out / "lock"):
        if nspawn_pid(node) is not None:
            raise LabError(f"{node.name} is already running", EXIT_REFUSED)
        root = paths.nodes / node.name / "root"
        if not net.exists(node.netns) or not is_mounted(root):
            raise LabError(f"{node.name} has no network namespace or root: the lab is not "
                           "up (`voxnode-lab up` starts it)", EXIT_REFUSED)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{node.name}", ignore_errors=True)
        pid = _boot(paths, node, root, append=True)
        state = load_state(paths)
        state.setdefault("nodes", {}).setdefault(node.name, {}).update(
            nspawn_pid=pid, nspawn_started=started_at(pid), crashed=None)
        save_state(paths, state)
        return _wait_agents(paths, timeout, (node,))[0]


# --- down -----------------------------------------------------------------------------------


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _wait_processes(paths: Paths) -> None:
    """Stop every process of the lab and wait, bounded, until they are gone and no node is
    listed by machinectl: SIGTERM to each systemd-nspawn (it powers its container off),
    then SIGKILL to whatever is left or appeared meanwhile. Raises naming what still runs."""
    tracked = lab_processes(paths)
    nspawns = [p for p in tracked if p.name == "systemd-nspawn" and p.owner in
               {n.name for n in NODES}]
    # sessions entered into a node (`voxnode-lab exec`/`shell`) first: a stopped one (a
    # background job that touched the terminal) cannot reap its command, and the
    # container's shutdown would wait for that zombie; once they are gone their commands
    # belong to the container's init, which ends them
    sessions = {p.pid for p in tracked if p.name == "nsenter"}
    entered = [p for p in tracked if p.pid in sessions or _parent(p.pid) in sessions]
    if entered:
        stop_processes(entered, signal.SIGKILL, KILL_TIMEOUT_S)
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


