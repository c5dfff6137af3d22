"""The pair lab's topology and the host commands it runs (root; see ``lab.pair.harness``).

Names and addresses: nodes ``a`` and ``b`` (10.88.0.11 and .12/24), the node IP
10.88.0.10, the client 10.88.0.100 and the bridge's own address 10.88.0.1 (the gateway and
witness), in namespaces ``vxha-<tag>-*``. Host commands with one-line failures
(``LabError``), the processes in a namespace, which labs exist, whether the kernel has
netem, and the CPU a set of processes uses. ``missing_tools()`` names the host tools that
are missing so that tests can skip cleanly; nothing is installed from here.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

Node = Literal["a", "b"]
Member = Literal["a", "b", "c", "gw"]
NODES: tuple[Node, Node] = ("a", "b")

PREFIX = "vxha-"
SUBNET_PREFIXLEN = 24
GATEWAY_IP = "10.88.0.1"
NODE_IP = "10.88.0.10"
NODE_ADDRESSES: dict[Node, str] = {"a": "10.88.0.11", "b": "10.88.0.12"}
CLIENT_IP = "10.88.0.100"
ECHO_PORT = 7
VRRP_PROTO = 112
CMD_TIMEOUT_S = 20.0

REQUIRED_TOOLS = ("ip", "tc", "nft", "iptables")


def other(node: Node) -> Node:
    return "b" if node == "a" else "a"


def missing_tools(extra: Iterable[str] = ()) -> list[str]:
    """Host commands this lab needs that are not installed (empty: all there)."""
    return [tool for tool in (*REQUIRED_TOOLS, *extra) if shutil.which(tool) is None]


class LabError(RuntimeError):
    """A lab command failed or a wait timed out; the message says which and why."""


def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True,
         timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def namespace_pids(ns: str) -> list[int]:
    """Every process whose network namespace is ``ns`` (``ip netns pids``)."""
    done = run(["ip", "netns", "pids", ns], check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (``CONFIG_NET_SCH_NETEM``)."""
    try:
        with gzip.open("/proc/config.gz", "rt") as config:
            text = config.read()
    except OSError:
        return Path("/sys/module/sch_netem").exists()
    return "CONFIG_NET_SCH_NETEM=y" in text or "CONFIG_NET_SCH_NETEM=m" in text


def lab_namespaces(tag: str | None = None) -> list[str]:
    """Namespaces of labs (of one lab if ``tag`` is given) that exist now."""
    done = run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    start = PREFIX if tag is None else f"{PREFIX}{tag}-"
    return [name for name in names if name.startswith(start)]


# --- CPU --------------------------------------------------------------------------------------


def _cpu_ticks(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def cpu_percent(pids: Sequence[int], seconds: float) -> float:
    """CPU used by ``pids`` over ``seconds`` (sum, % of one core); processes that exit
    in between count up to their last reading."""
    hz = os.sysconf("SC_CLK_TCK")
    start = {pid: _cpu_ticks(pid) for pid in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    used = 0
    for pid, before in start.items():
        after = _cpu_ticks(pid)
        if before is not None and after is not None:
            used += after - before
    return 100.0 * used / hz / (time.monotonic() - t0)
