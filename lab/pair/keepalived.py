"""keepalived 2.2 (unicast, nopreempt) as the anchor pair in the pair lab: its config per
node, the pair in both node namespaces (config and pid files under the lab's workdir, never
/etc/keepalived, never the host's instance), roles read from its log.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from lab.pair.harness import PairLab
from lab.pair.topology import (
    NODE_ADDRESSES,
    NODE_IP,
    NODES,
    SUBNET_PREFIXLEN,
    LabError,
    Node,
    other,
)

KEEPALIVED_PRIORITY = 100  # both equal: the takeover skew is the same whichever node dies
_STATE_LINE = re.compile(r"\((\w+)\) Entering (MASTER|BACKUP|FAULT) STATE")


def render_keepalived_conf(node: Node, *, advert_s: float, priority: int = KEEPALIVED_PRIORITY,
                           router_id: int = 51) -> str:
    """keepalived.conf for one node: unicast to the peer, nopreempt, BACKUP at start."""
    version = 2 if advert_s >= 1 and float(advert_s).is_integer() else 3
    advert = f"{advert_s:g}"
    return f"""# rendered by lab/pair/keepalived.py for lab node {node}
global_defs {{
    router_id vxha_{node}
    vrrp_version {version}
    vrrp_garp_master_delay 5
    vrrp_garp_master_repeat 5
    vrrp_garp_master_refresh 0
    enable_script_security
}}

vrrp_instance VI_1 {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id {router_id}
    priority {priority}
    advert_int {advert}
    unicast_src_ip {NODE_ADDRESSES[node]}
    unicast_peer {{
        {NODE_ADDRESSES[other(node)]}
    }}
    virtual_ipaddress {{
        {NODE_IP}/{SUBNET_PREFIXLEN} dev eth0 label eth0:vip
    }}
}}
"""


class KeepalivedPair:
    """keepalived in both node namespaces, config and pid files under the lab's workdir
    (never /etc/keepalived, never the host's instance). Roles come from its log."""

    def __init__(self, lab: PairLab, advert_s: float) -> None:
        self.lab = lab
        self.advert_s = advert_s
        self.base = lab.workdir / f"keepalived-{advert_s:g}"
        self.base.mkdir(parents=True, exist_ok=True)
        self.parents: dict[Node, subprocess.Popen[bytes]] = {}

    def paths(self, node: Node) -> dict[str, Path]:
        return {k: self.base / f"{node}.{k}" for k in ("conf", "pid", "vrrp.pid", "log")}

    def start_node(self, node: Node) -> None:
        paths = self.paths(node)
        paths["conf"].write_text(render_keepalived_conf(node, advert_s=self.advert_s))
        self.parents[node] = self.lab.spawn(node, [
            "keepalived", "-n", "-l", "-D", "-P", "-f", str(paths["conf"]),
            "-p", str(paths["pid"]), "-r", str(paths["vrrp.pid"]),
        ], log=paths["log"])

    def start(self, *, timeout: float | None = None) -> Node:
        for node in NODES:
            self.start_node(node)
        return self.wait_master(timeout=timeout or 3 * (4 * self.advert_s + 1))

    def state(self, node: Node) -> str | None:
        """The last state keepalived logged on ``node`` (MASTER, BACKUP, FAULT) or None;
        "DEAD" once its parent exited or the node crashed."""
        proc = self.parents.get(node)
        if proc is None:
            return None
        if proc.poll() is not None or node in self.lab.faults.crashed:
            return "DEAD"
        try:
            text = self.paths(node)["log"].read_text(errors="replace")
        except FileNotFoundError:
            return None
        states = _STATE_LINE.findall(text)
        return states[-1][1] if states else None

    def master(self) -> Node | None:
        masters = [n for n in NODES if self.state(n) == "MASTER"]
        return masters[0] if len(masters) == 1 else None

    def wait_master(self, *, timeout: float) -> Node:
        """One node MASTER holding the node IP, the other BACKUP."""
        deadline = time.monotonic() + timeout
        while True:
            master = self.master()
            if (master is not None and self.state(other(master)) == "BACKUP"
                    and self.lab.vip_holders() == {master}):
                return master
            if time.monotonic() > deadline:
                states = {n: self.state(n) for n in NODES}
                raise LabError(f"keepalived: no single master within {timeout:g} s ({states})")
            time.sleep(0.05)

    def stop_node(self, node: Node, timeout: float = 10.0) -> float:
        """SIGTERM keepalived on ``node`` (it sends a priority-0 advert and drops the node
        IP); the time of the signal."""
        proc = self.parents[node]
        at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
        return at

    def stop(self) -> None:
        for node, proc in self.parents.items():
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.stop_node(node)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def keepalived_lab(advert_s: float, *, sample_vip: bool = True
                   ) -> Iterator[tuple[PairLab, KeepalivedPair]]:
    """A lab with a keepalived pair up (one master, the client answered by it)."""
    with PairLab(sample_vip=sample_vip) as lab:
        pair = KeepalivedPair(lab, advert_s)
        try:
            master = pair.start()
            lab.wait_steady(master, for_s=0.3, timeout=10)
            yield lab, pair
        finally:
            pair.stop()
