"""The appliance as an administrator has it at the end of the product guide, made of the
booted lab (``voxnode-lab up`` without ``--standalone``):

1. the vendor's licence server and mail sink in the lab (``lab.vendor``, 10.77.0.201);
2. each node licensed through the real flow: its document's ``license.server_url`` points
   at the lab server, one serial per node (modules ``PBX``), ``voxnode license activate``
   (the server emails a code to the sink), ``voxnode license verify --code``; the licence
   starts the node's MariaDB, and Kamailio is switched to keep its registrations in it
   (``kamailio-local.cfg`` linked to the rootfs's ``usrloc-db.cfg``: usrloc written
   through to the ``location`` table, ``lab.rootfs``) and restarted;
3. working mode Standard (the seed's), the pair: ``voxnode ha pair-key generate`` on node1,
   ``set -`` on node2, the arbiter (``voxnode-arbiter`` in the bridge namespace, on the
   gateway 10.77.0.1:7412, the pair key in ``out/lab/arbiter.key``), then each node's
   document plus an ``ha`` section (peer, node IP 10.77.0.10/24 on eth0, the gateway as
   witness, the arbiter, the MariaDB database replicated), node1 first;
4. waits until one master holds 10.77.0.10 in its kernel, the other is slave, Kamailio
   serves the node IP on the master, and the slave's database replicates the master's
   with the master's commits waiting for it (semi-synchronous): a phone's registration
   is on the slave before the phone has its answer, so it survives a crash of the master.

Everything goes through the agent's own interfaces (``voxnode`` inside the nodes), as an
administrator would. What was started is recorded in the state file; ``lab down`` stops it
(everything runs in a lab namespace).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from lab import net, rootfs, vendor
from lab.net import Member
from lab.nodes import NODES, alive, container_pid, nspawn_pid
from lab.nodes import node_command as _node_command
from lab.util import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    REPO,
    LabError,
    Paths,
    started_at,
    step,
    tail,
)

NODE_IP = "10.77.0.10"
NODE_IP_CIDR = f"{NODE_IP}/{net.PREFIXLEN}"
ARBITER_PORT = 7412
EMAIL = "admin@lab.example"
COMPANY = "voxnode lab"
MODULES = "PBX"
PAIR_TIMEOUT_S = 30.0
T = TypeVar("T")


@dataclass
class NodeRole:
    name: str
    role: str | None
    holds_node_ip: bool
    kamailio: str
    licence: str | None
    serial: str | None
    # the database stream's state (``voxnode replication status``: master, replicating, …)
    # and, on a master, whether its commits wait for the replica (semi-synchronous)
    database: str | None = None
    semi_sync: bool = False


def _leader(node: Member) -> int:
    pid = nspawn_pid(node)
    leader = container_pid(pid) if pid else None
    if leader is None:
        raise LabError(f"{node.name} is not running", EXIT_UNREACHABLE)
    return leader


def node_run(node: Member, *cmd: str, stdin: str | None = None,
             timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(_node_command(_leader(node), list(cmd)), input=stdin,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"{node.name}: `{' '.join(cmd)}` did not finish within "
                       f"{timeout:.0f} s", EXIT_UNREACHABLE) from None


def voxnode(node: Member, *args: str, stdin: str | None = None) -> str:
    proc = node_run(node, "voxnode", *args, stdin=stdin)
    if proc.returncode != 0:
        raise LabError(f"{node.name}: `voxnode {' '.join(args)}` exited {proc.returncode}",
                       detail=(proc.stderr + proc.stdout).strip())
    return proc.stdout


def voxnode_json(node: Member, *args: str, stdin: str | None = None) -> Any:
    return json.loads(voxnode(node, "--json", *args, stdin=stdin))


def apply(node: Member, document: dict[str, Any], comment: str) -> str:
    """``voxnode config apply -`` of ``document`` (JSON is YAML: no YAML library needed)."""
    return voxnode(node, "config", "apply", "-", "--comment", comment,
                   stdin=json.dumps(document))


def document(node: Member) -> dict[str, Any]:
    doc: dict[str, Any] = voxnode_json(node, "config", "show")["document"]
    return doc


def other(node: Member) -> Member:
    return NODES[1] if node == NODES[0] else NODES[0]


@dataclass
class Vendor:
    """The vendor's side, made while the nodes boot: its servers and one serial a node."""

    shop: vendor.Vendor
    serials: dict[str, str]


def prepare(paths: Paths, state: dict[str, Any], save: Callable[[dict[str, Any]], None]
            ) -> Vendor:
    """Start the licence server and mail sink (recorded in ``state`` at once, so that
    ``lab down`` stops them whatever fails next) and sell each node a serial."""
    shop, started = vendor.start(paths)
    state["vendor"] = started
    save(state)
    return Vendor(shop, {node.name: shop.create_serial(MODULES, EMAIL, COMPANY)
                         for node in NODES})


def license_node(node: Member, shop: vendor.Vendor, serial: str) -> str:
    """The real flow with a serial the vendor sold: the node's licence server, activate
    (a code emailed to the sink), verify. The serial."""
    doc = document(node)
    doc["license"] = {**(doc.get("license") or {}), "server_url": vendor.URL}
    apply(node, doc, "the lab's licence server")
    voxnode(node, "license", "activate", "--serial", serial, "--email", EMAIL)
    code = shop.code_for(serial)
    verified = voxnode_json(node, "license", "verify", "--code", code)
    state = (verified.get("licence") or {}).get("state")
    if state != "ACTIVE":
        raise LabError(f"{node.name}: licence {serial} is {state} after verify, not ACTIVE",
                       detail=json.dumps(verified, indent=2))
    return serial


def registrations_in_database(node: Member) -> None:
    """Kamailio keeps its registrations in the node's MariaDB, which the licence started:
    ``kamailio-local.cfg`` linked to the rootfs's ``usrloc-db.cfg``, Kamailio restarted if
    it runs (it connects to the database at its start, and would not start without one)."""
    local = rootfs.KAMAILIO_LOCAL_CFG
    target = rootfs.USRLOC_DB.rsplit("/", 1)[1]
    for cmd in (("ln", "-sfn", target, local),
                ("systemctl", "try-restart", "kamailio.service")):
        proc = node_run(node, *cmd)
        if proc.returncode != 0:
            raise LabError(f"{node.name}: `{' '.join(cmd)}` exited {proc.returncode}",
                           detail=(proc.stderr + proc.stdout).strip())


def both(work: Callable[[Member], T]) -> dict[str, T]:
    """``work(node)`` for node1 and node2 at once (each mostly waits on its agent); the
    results by node name, or the first node's error."""
    with ThreadPoolExecutor(max_workers=len(NODES)) as pool:
        futures = {node.name: pool.submit(work, node) for node in NODES}
        return {name: future.result() for name, future in futures.items()}


def start_arbiter(paths: Paths, key: str) -> dict[str, Any]:
    """``voxnode-arbiter`` on the gateway address, in the bridge namespace (a lab namespace:
    ``lab down`` stops it)."""
    key_file = paths.out / "arbiter.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    log = paths.out / "arbiter.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", net.BRIDGE_NS, sys.executable, "-m", "ha.arbiter",
             "--listen", f"{net.GATEWAY}:{ARBITER_PORT}", "--key-file", str(key_file)],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env,
            start_new_session=True)
    deadline = time.monotonic() + 15
    while "arbiter listening on" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the arbiter did not start (exit {proc.poll()}, log {log})",
                           detail=tail(log, 10))
        time.sleep(0.05)
    return {"pid": proc.pid, "started": started_at(proc.pid), "log": str(log),
            "address": f"{net.GATEWAY}:{ARBITER_PORT}", "key_file": str(key_file)}


def ha_document(node: Member) -> dict[str, Any]:
    doc = document(node)
    ha = dict(doc.get("ha") or {})
    ha.update(enabled=True, peer=other(node).address,
              shared_ips=[{"interface": "eth0", "address": NODE_IP_CIDR, "primary": True}],
              witnesses=[net.GATEWAY],
              arbiter={"address": net.GATEWAY, "port": ARBITER_PORT},
              # the node's MariaDB, Kamailio's registrations included, master -> slave
              replication={"database": {"engine": "mariadb"}})
    doc["ha"] = ha
    return doc


def _holds_node_ip(node: Member) -> bool:
    return NODE_IP_CIDR in net.addresses(node.netns)


def _serves_node_ip(node: Member) -> bool:
    proc = subprocess.run(["ip", "netns", "exec", node.netns, "ss", "-Hulnp", "sport", "=",
                           ":5060"], capture_output=True, text=True, check=False)
    return "kamailio" in proc.stdout and any(
        f"{a}:5060" in proc.stdout for a in (NODE_IP, "0.0.0.0", "*"))


def _database_of(node: Member) -> tuple[str | None, str | None, bool]:
    """``voxnode replication status``: the node's role, its database stream's state and,
    on a master, whether its commits wait for the replica."""
    try:
        data = voxnode_json(node, "replication", "status")
    except (LabError, ValueError):
        return None, None, False
    stream = data.get("database") or {}
    server = stream.get("server") or {}
    semi_sync = bool(server.get("semi_sync_master")) and int(
        server.get("semi_sync_clients") or 0) > 0
    return data.get("role"), stream.get("state"), semi_sync


def role_of(node: Member) -> NodeRole:
    role = licence = serial = database = None
    kamailio = "-"
    semi_sync = False
    try:
        status = voxnode_json(node, "status")
        licence = (status.get("licence") or {}).get("state")
        serial = (status.get("licence") or {}).get("serial")
        role = (status.get("pair") or {}).get("role")
        kamailio = node_run(node, "systemctl", "is-active", "kamailio",
                            timeout=10).stdout.strip()
        if role is not None:
            _, database, semi_sync = _database_of(node)
    except (LabError, ValueError):
        pass
    return NodeRole(node.name, role, _holds_node_ip(node), kamailio, licence, serial,
                    database, semi_sync)


def _replicates(master: NodeRole, slave: NodeRole) -> bool:
    """The slave's database replicates the master's, whose commits wait for it."""
    return master.database == "master" and master.semi_sync and slave.database == "replicating"


def roles() -> list[NodeRole]:
    return list(both(role_of).values())


def wait_pair(timeout: float = PAIR_TIMEOUT_S) -> Member:
    """One master whose kernel holds the node IP and whose Kamailio serves it; the other
    slave without it, its database replicating the master's (semi-synchronous). The
    master."""
    deadline = time.monotonic() + timeout
    while True:
        # one `voxnode` call a node a look (the agent's CLI takes most of a look's time);
        # kamailio: whether it serves the node IP
        looks = both(_database_of)
        now = {n.name: NodeRole(n.name, looks[n.name][0], _holds_node_ip(n),
                                "serving" if _serves_node_ip(n) else "-", None, None,
                                looks[n.name][1], looks[n.name][2]) for n in NODES}
        masters = [n for n in NODES if now[n.name].role == "master"]
        if len(masters) == 1:
            master, slave = now[masters[0].name], now[other(masters[0]).name]
            if (slave.role == "slave" and master.holds_node_ip and not slave.holds_node_ip
                    and master.kamailio == "serving" and _replicates(master, slave)):
                return masters[0]
        if time.monotonic() > deadline:
            raise LabError(f"the pair did not settle within {timeout:.0f} s (one master "
                           f"holding {NODE_IP} with Kamailio serving it, one slave whose "
                           "database replicates the master's)",
                           EXIT_UNREACHABLE, detail="\n".join(str(r) for r in now.values()))
        time.sleep(0.3)


def configure(paths: Paths, state: dict[str, Any], save: Any, sold: Vendor) -> Member:
    """Make the booted lab the appliance (see the module docstring) with the vendor
    ``prepare`` started; ``save(state)`` after each thing started. The master."""
    shop = sold.shop
    with step("licences of node1 and node2 (serial, emailed code, verify; Kamailio's "
              "registrations in the database); the pair key and the arbiter "
              f"{net.GATEWAY}:{ARBITER_PORT}"):
        with ThreadPoolExecutor(max_workers=1) as pool:
            def licensed(node: Member) -> str:
                serial = license_node(node, shop, sold.serials[node.name])
                registrations_in_database(node)
                return serial

            licensing = pool.submit(both, licensed)
            try:
                key = voxnode(NODES[0], "ha", "pair-key", "generate").strip()
                if len(key) != 64:
                    raise LabError("`voxnode ha pair-key generate` printed no key", EXIT_FAILED)
                voxnode(NODES[1], "ha", "pair-key", "set", "-", stdin=key + "\n")
                state["arbiter"] = start_arbiter(paths, key)
                save(state)
            finally:
                serials = licensing.result()
        for name, serial in serials.items():
            state["nodes"][name]["serial"] = serial
        save(state)
    with step(f"pair: node IP {NODE_IP_CIDR}, the gateway as witness, the arbiter"):
        # both at once: two nodes starting together elect the lower address, node1
        both(lambda node: apply(node, ha_document(node), "the pair"))
    with step(f"waiting for one master holding {NODE_IP} with Kamailio, its database "
              f"replicated (up to {PAIR_TIMEOUT_S:.0f} s)"):
        master = wait_pair()
    state["master"] = master.name
    save(state)
    return master


def _runs(record: dict[str, Any] | None) -> bool:
    """Whether a process the state file recorded (pid and start time) still runs."""
    if not record or not isinstance(record.get("pid"), int):
        return False
    return started_at(record["pid"]) == record.get("started") and alive(record["pid"])


def status(state: dict[str, Any]) -> dict[str, Any]:
    """The appliance's part of ``voxnode-lab status``: each node's role, node IP, Kamailio,
    licence and database, the vendor's servers and the arbiter, whether the pair is settled
    (one master holding the node IP, one slave) and its database replicated."""
    found = roles()
    vendor_state = state.get("vendor") or {}
    masters = [r for r in found if r.role == "master"]
    settled = (len(masters) == 1 and masters[0].holds_node_ip
               and sum(r.role == "slave" and not r.holds_node_ip for r in found) == 1)
    vendor_up = (_runs(vendor_state.get("server")) and _runs(vendor_state.get("mailsink")))
    arbiter_up = _runs(state.get("arbiter"))
    slaves = [r for r in found if r.role == "slave"]
    replicated = settled and _replicates(masters[0], slaves[0])
    problems = ([] if settled else [f"the pair is not settled (no single master holding "
                                    f"{NODE_IP} and one slave)"])
    problems += [] if replicated or not settled else [
        "the slave's database does not replicate the master's semi-synchronously "
        "(`voxnode replication status` on each node)"]
    problems += [] if _runs(vendor_state.get("server")) else ["the licence server stopped"]
    problems += [] if _runs(vendor_state.get("mailsink")) else ["the mail sink stopped"]
    problems += [] if arbiter_up else ["the arbiter stopped"]
    return {
        "node_ip": NODE_IP,
        "healthy": replicated and vendor_up and arbiter_up,
        "problems": problems,
        "settled": settled,
        "replicated": replicated,
        "nodes": {r.name: {"role": r.role, "holds_node_ip": r.holds_node_ip,
                           "kamailio": r.kamailio, "licence": r.licence, "serial": r.serial,
                           "database": r.database}
                  for r in found},
        "vendor": {"url": vendor.URL, "netns": vendor.NETNS,
                   "licence_server": _runs(vendor_state.get("server")),
                   "mail_sink": _runs(vendor_state.get("mailsink"))},
        "arbiter": {"address": f"{net.GATEWAY}:{ARBITER_PORT}",
                    "running": _runs(state.get("arbiter"))},
    }


def status_text(data: dict[str, Any]) -> str:
    lines = [f"appliance: node IP {data['node_ip']}, "
             + ("settled (one master holds it, one slave)" if data["settled"]
                else "NOT SETTLED (no single master holding the node IP)")]
    for name, n in data["nodes"].items():
        lines.append(f"  {name}: {n['role'] or '?':6}  "
                     f"{'holds ' + data['node_ip'] if n['holds_node_ip'] else 'no node IP':18}  "
                     f"kamailio {n['kamailio']:8}  database {n['database'] or '-':11}  "
                     f"licence {n['licence']} ({n['serial']})")
    v, a = data["vendor"], data["arbiter"]
    lines.append(f"  vendor: {v['url']} licence server "
                 f"{'running' if v['licence_server'] else 'STOPPED'}, mail sink "
                 f"{'running' if v['mail_sink'] else 'STOPPED'} (netns {v['netns']})")
    lines.append(f"  arbiter: {a['address']} {'running' if a['running'] else 'STOPPED'}")
    lines += [f"  problem: {p}" for p in data["problems"]]
    return "\n".join(lines)


def pair_text() -> str:
    lines = ["", f"The appliance is up: a licensed pair serving the node IP {NODE_IP}"]
    for r in roles():
        node = next(n for n in NODES if n.name == r.name)
        lines.append(f"  {r.name}: {node.address}  {r.role or '?':6}  "
                     f"{'holds ' + NODE_IP if r.holds_node_ip else 'no node IP':18}  "
                     f"kamailio {r.kamailio:8}  database {r.database or '-':11}  "
                     f"licence {r.licence} ({r.serial})")
    lines += [
        f"  vendor: {vendor.URL} (licence server, netns {vendor.NETNS}; mail in "
        "out/lab/vendor/mail.jsonl)",
        f"  arbiter: {net.GATEWAY}:{ARBITER_PORT}; witness: the gateway {net.GATEWAY}",
        "",
        "Try it:",
        "  ip netns exec vxlab-client .venv/bin/python -m tests.sipclient --registrar "
        f"{NODE_IP}   # two phones register and call",
        "  .venv/bin/voxnode-lab exec node2 -- watch -n0.5 voxnode ha status   # in a 2nd "
        "terminal",
        "  .venv/bin/voxnode-lab crash node1      # the master dies; node2 takes "
        f"{NODE_IP}",
        "  .venv/bin/voxnode-lab exec node2 -- voxnode replication status   # the "
        "registrations came with it",
        "  .venv/bin/voxnode-lab start node1      # it comes back as slave",
        "  .venv/bin/voxnode-lab exec node2 -- voxnode ha switchover   # hand it back",
        "  make lab-down                          # remove everything",
    ]
    return "\n".join(lines)
