"""A failover lab in network namespaces: two nodes, a bridge and a client; faults; probes.

Owned here (importable by ``tests/netns`` and ``bench/pairbench.py``; needs root):

- ``PairLab``: namespaces ``vxha-<tag>-br`` (bridge ``br0`` with 10.88.0.1/24, the gateway
  and witness), ``vxha-<tag>-a`` and ``vxha-<tag>-b`` (``eth0``, 10.88.0.11/24 and .12/24
  when ``assign_node_addresses`` is true; a voxnode agent configures them itself),
  ``vxha-<tag>-c`` (the client, 10.88.0.100/24). The node IP is 10.88.0.10/24 (the names
  and addresses are ``lab.pair.topology``'s). Each member is joined to ``br0`` by a veth
  pair whose bridge side is ``vp-<member>``. Teardown kills every process in the
  namespaces (``ip netns pids``) and deletes them, also on failure.
- A UDP echo service (port 7) in each node namespace that answers with its node name, and
  a prober in the client namespace that sends to the node IP every 10 ms and records who
  answered when (``lab.pair.probes``: ``ProbeLog``, ``GapReport``).
- A VIP sampler that reads ``ip -n NS -j addr`` on the nodes in turn, a read every ~10 ms;
  a node counts as holding the node IP at a sample only if the reads just before and just
  after say so (``bracket``), so a handover between two reads is not a false "both held"
  (``both_held_samples()``).
- Faults (``lab.pair.faults``, methods of ``PairLab``): ``crash``, link down and flaps,
  heartbeat loss and delay, blocked heartbeats, partitions and isolation.

The pairs run in it: ``lab.pair.keepalived`` (the anchor) and ``lab.pair.voxnode`` (two
real agents). Host tools: iproute2 (ip, tc, bridge), nftables (nft), iptables
(iptables-nft, for the NFQUEUE rule: nft's own ``queue`` is not built into this kernel),
keepalived. All times are ``time.monotonic()`` (CLOCK_MONOTONIC is the same in every
namespace).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from lab.pair.faults import Faults, FaultState
from lab.pair.probes import (
    ECHO_SERVER,
    PROBE_INTERVAL_S,
    PROBER,
    SAMPLE_INTERVAL_S,
    ProbeLog,
    VipRead,
    VipSample,
    bracket,
)
from lab.pair.topology import (
    CLIENT_IP,
    ECHO_PORT,
    GATEWAY_IP,
    NODE_ADDRESSES,
    NODE_IP,
    NODES,
    PREFIX,
    SUBNET_PREFIXLEN,
    LabError,
    Node,
    namespace_pids,
    run,
)

# --- the lab ---------------------------------------------------------------------------------


class PairLab(Faults):
    """The namespace lab (see the module docstring). Use as a context manager."""

    def __init__(self, tag: str | None = None, *, assign_node_addresses: bool = True,
                 echo: bool = True, probe: bool = True, sample_vip: bool = True) -> None:
        self.tag = tag or secrets.token_hex(3)
        if not re.fullmatch(r"[a-z0-9]{1,8}", self.tag):
            raise ValueError(f"tag {self.tag!r}: 1-8 lowercase letters or digits")
        self.assign_node_addresses = assign_node_addresses
        self._want_echo, self._want_probe, self._want_sampler = echo, probe, sample_vip
        self.ns: dict[str, str] = {m: f"{PREFIX}{self.tag}-{m}" for m in ("br", "a", "b", "c")}
        self.workdir = Path(tempfile.mkdtemp(prefix=f"vxha-{self.tag}-", dir="/tmp"))
        self.probe = ProbeLog(self.workdir / "probe.log")
        self.faults = FaultState()
        self._procs: list[subprocess.Popen[bytes]] = []
        self.helper_pids: set[int] = set()  # echo servers and prober: not the implementation's
        self._samples: list[VipSample] = []
        self._samples_lock = threading.Lock()
        self._sampler_stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._impairers: dict[str, subprocess.Popen[bytes]] = {}

    # --- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> PairLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def node_ns(self, node: str) -> str:
        return self.ns[node]

    def ip(self, ns_key: str, *args: str, check: bool = True) -> str:
        return run(["ip", "-n", self.ns[ns_key], *args], check=check).stdout

    def nsexec(self, ns_key: str, *argv: str, stdin: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.ns[ns_key], *argv], stdin=stdin, check=check)

    def _build(self) -> None:
        for name in self.ns.values():
            run(["ip", "netns", "add", name])
            run(["ip", "-n", name, "link", "set", "lo", "up"])
        self.ip("br", "link", "add", "br0", "type", "bridge", "stp_state", "0",
                "forward_delay", "0")
        self.ip("br", "addr", "add", f"{GATEWAY_IP}/{SUBNET_PREFIXLEN}", "dev", "br0")
        self.ip("br", "link", "set", "br0", "up")
        for member in ("a", "b", "c"):
            self.ip(member, "link", "add", "eth0", "type", "veth", "peer", "name",
                    f"vp-{member}", "netns", self.ns["br"])
            self.ip("br", "link", "set", f"vp-{member}", "master", "br0", "up")
            self.ip(member, "link", "set", "eth0", "up")
        self.ip("c", "addr", "add", f"{CLIENT_IP}/{SUBNET_PREFIXLEN}", "dev", "eth0")
        if self.assign_node_addresses:
            for node in NODES:
                self.assign_address(node)
        if self._want_echo:
            for node in NODES:
                self.start_echo(node)
        if self._want_probe:
            self._start_prober()
        if self._want_sampler:
            self._sampler = threading.Thread(target=self._sample_loop, name=f"vip-{self.tag}",
                                             daemon=True)
            self._sampler.start()

    def assign_address(self, node: Node) -> None:
        self.ip(node, "addr", "replace", f"{NODE_ADDRESSES[node]}/{SUBNET_PREFIXLEN}", "dev",
                "eth0")

    def spawn(self, ns_key: str, argv: Sequence[str], *, log: Path | None = None,
              helper: bool = False) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a namespace (``ip netns exec`` execs it: the pid is the
        program's own). It is killed at teardown at the latest."""
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns[ns_key], *argv],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if log is not None and not isinstance(out, int):
                out.close()
        self._procs.append(proc)
        if helper:
            self.helper_pids.add(proc.pid)
        return proc

    def start_echo(self, node: Node) -> None:
        self.spawn(node, [sys.executable, "-I", "-c", ECHO_SERVER, node, str(ECHO_PORT)],
                   helper=True)

    def _start_prober(self) -> None:
        self.spawn("c", [sys.executable, "-I", "-c", PROBER, NODE_IP, str(ECHO_PORT),
                         str(PROBE_INTERVAL_S), str(self.probe.path)], helper=True)

    def close(self) -> None:
        """Stop the sampler, kill every process in the namespaces, delete them."""
        self._sampler_stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        for _ in range(3):
            pids = [pid for name in self.ns.values() for pid in namespace_pids(name)]
            pids += [p.pid for p in self._procs if p.poll() is None]
            pids = [pid for pid in set(pids) if pid != os.getpid()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for name in self.ns.values():
            run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- the VIP sampler ------------------------------------------------------------------

    def holds_vip(self, node: Node) -> bool | None:
        """Whether ``eth0`` of ``node`` carries the node IP (None: could not read)."""
        done = run(["ip", "-n", self.ns[node], "-j", "-4", "addr", "show", "dev", "eth0"],
                    check=False, timeout=5)
        if done.returncode != 0:
            return None
        try:
            links = json.loads(done.stdout or "[]")
        except ValueError:
            return None
        return any(info.get("local") == NODE_IP
                   for link in links for info in link.get("addr_info", []))

    def _sample_loop(self) -> None:
        reads: deque[VipRead] = deque(maxlen=3)
        turn = itertools.cycle(NODES)
        next_at = time.monotonic()
        while not self._sampler_stop.is_set():
            node = next(turn)
            value: bool | None = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                value = self.holds_vip(node)
            if value is None:
                reads.clear()  # a gap: start a new bracket
            else:
                reads.append(VipRead(node, value, time.monotonic()))
                sample = bracket(reads)
                if sample is not None:
                    with self._samples_lock:
                        self._samples.append(sample)
            next_at = max(next_at + SAMPLE_INTERVAL_S / 2, time.monotonic())
            self._sampler_stop.wait(max(0.0, next_at - time.monotonic()))

    def vip_samples(self, since: float = 0.0) -> list[VipSample]:
        with self._samples_lock:
            return [s for s in self._samples if s.at >= since]

    def both_held_samples(self, since: float = 0.0, *, count_crashed: bool = False
                          ) -> list[VipSample]:
        """Samples in which both nodes held the node IP. A crashed node keeps its addresses
        (its kernel lives on), so by default a node counts only before its crash."""
        out = []
        for sample in self.vip_samples(since):
            holders = [n for n in NODES if sample.held.get(n)]
            if not count_crashed:
                holders = [n for n in holders
                           if n not in self.faults.crashed or sample.at < self.faults.crashed[n]]
            if len(holders) == 2:
                out.append(sample)
        return out

    def vip_holders(self) -> set[Node]:
        """Nodes that hold the node IP now (a fresh read, not the sampler's)."""
        return {node for node in NODES if self.holds_vip(node)}

    def holder_changes(self, since: float) -> int:
        """How often the set of nodes holding the node IP changed since ``since``."""
        changes, last = 0, None
        for sample in self.vip_samples(since):
            if len(sample.held) != 2:
                continue
            now = frozenset(n for n in NODES if sample.held[n])
            if last is not None and now != last:
                changes += 1
            last = now
        return changes

    # --- waiting -------------------------------------------------------------------------

    def wait_steady(self, node: str, *, since: float = 0.0, for_s: float = 0.5,
                    timeout: float = 15.0) -> float:
        """Wait until the client got replies only from ``node``, steadily, for ``for_s``;
        the time that became true. LabError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.probe.steady_from(node, since, for_s=for_s, now=now):
                return now
            if now > deadline:
                raise LabError(f"the client did not get steady replies from node {node} "
                               f"within {timeout:g} s ({self.probe.describe(now - 2.0, now)})")
            time.sleep(0.05)

    # --- processes ------------------------------------------------------------------------

    def implementation_pids(self) -> list[int]:
        """Processes in the node namespaces that are not the lab's own helpers."""
        pids = []
        for node in NODES:
            pids += [p for p in namespace_pids(self.ns[node]) if p not in self.helper_pids]
        return pids
