"""The failover benchmark: failover pairs in the namespace lab of ``lab/pair/harness.py``.

Every trial builds a fresh lab, starts the pair, lets the client see steady replies from
the master, waits a random fraction of the implementation's heartbeat interval (so the fault
does not always land at the same advert phase) and injects one fault:

- ``crash``: freeze (SIGSTOP) then SIGKILL every process of the master's namespace;
- ``link-down``: down the bridge-side veth of the master (its eth0 loses carrier);
- ``graceful``: the implementation's own switchover (keepalived: SIGTERM on the master,
  which sends a priority-0 advert).

Fault cases that must move nothing (``FAULT_CASES``), each held for ``FAULT_HOLD_S``,
counting the samples where both nodes held the node IP and the holder changes (false
failovers):

- ``ip-partition``: a ``blackhole`` route to the peer on both nodes (``sendto`` fails;
  ARP and raw Ethernet still work);
- ``l2-cut``: a bridge filter that cuts only A<->B, both still reaching the gateway; voxnode
  runs with its arbiter (``voxnode-arbiter`` on the gateway) for this case;
- ``flood``: 100,000 packets/s of junk that starts like a voxnode message, half as UDP to
  the master's heartbeat port, half as broadcast frames of EtherType 0x88B5
  (``tests/tools/flood.c``).

The client gap is the longest silence between two replies of the 10 ms UDP probe around
the fault, ending once the other node has answered alone for 1 s. A soak puts 5 % loss and
50±25 ms jitter on the heartbeat both nodes send (``PairLab.impair_heartbeat``: NFQUEUE,
since this kernel has no netem) and counts failovers that no fault caused.
Idle CPU is read from /proc/<pid>/stat of the implementation's processes over 10 s.

Only measured values are printed or written; a trial that fails is reported as failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.state.model import HAProfile  # noqa: E402
from ha.machine import TIMINGS  # noqa: E402
from lab.pair.harness import PairLab  # noqa: E402
from lab.pair.keepalived import KeepalivedPair  # noqa: E402
from lab.pair.topology import (  # noqa: E402
    GATEWAY_IP,
    NODE_ADDRESSES,
    NODES,
    LabError,
    Node,
    cpu_percent,
    missing_tools,
    other,
)
from lab.pair.voxnode import VoxnodePair  # noqa: E402

CASES = ("crash", "link-down", "graceful")
FAULT_CASES = ("ip-partition", "l2-cut", "flood")
FAULT_HOLD_S = 8.0
ARBITER_PORT = 7412
FLOOD_SOURCE = REPO / "tests/tools/flood.c"
SETTLE_S = 1.0
SOAK_POLL_S = 0.05
TARGETS_MS = {  # from the issue; checked only for voxnode rows
    ("voxnode-standard", "crash"): 1000.0,
    ("voxnode-standard", "graceful"): 100.0,
    ("voxnode-fast", "crash"): 300.0,
    ("voxnode-fast", "graceful"): 100.0,
}


class PairImpl(Protocol):
    """A failover pair the bench can drive. One instance serves one lab at a time.

    ``configures_addresses``: the implementation assigns the nodes' own addresses itself
    (the lab then leaves eth0 without 10.88.0.11/.12). ``heartbeat_interval_s`` spreads the
    fault over the heartbeat phase; ``recovery_timeout_s`` bounds the wait for a takeover.
    """

    name: str
    configures_addresses: bool
    heartbeat_interval_s: float
    recovery_timeout_s: float
    heartbeat: tuple[str, int | None]  # ("vrrp", None) or ("udp"/"tcp", port): soak target

    def start(self, lab: PairLab) -> None:
        """Start both nodes; return once one is master (holding the node IP) and the other
        is its standby. Raise LabError otherwise."""

    def master(self, lab: PairLab) -> Node | None:
        """The node that is master now (None: none or both); crashed nodes do not count."""

    def graceful_switchover(self, lab: PairLab) -> float:
        """Hand the node IP to the standby in the planned way; the monotonic time it began."""

    def stop(self, lab: PairLab) -> None:
        """Stop whatever start() started that is still running (the lab kills the rest)."""


class KeepalivedImpl:
    """The anchor: keepalived 2.2 unicast, nopreempt, equal priorities (lab/pair/harness.py)."""

    configures_addresses = False
    heartbeat: tuple[str, int | None] = ("vrrp", None)

    def __init__(self, advert_s: float) -> None:
        self.advert_s = advert_s
        self.name = f"keepalived-{advert_s:g}s"
        self.heartbeat_interval_s = advert_s
        self.recovery_timeout_s = 4 * advert_s + 5.0
        self._pairs: dict[str, KeepalivedPair] = {}

    def start(self, lab: PairLab) -> None:
        pair = KeepalivedPair(lab, self.advert_s)
        self._pairs[lab.tag] = pair
        pair.start()

    def master(self, lab: PairLab) -> Node | None:
        return self._pairs[lab.tag].master()

    def graceful_switchover(self, lab: PairLab) -> float:
        pair = self._pairs[lab.tag]
        master = pair.master()
        if master is None:
            raise LabError("keepalived: no master to switch over from")
        return pair.stop_node(master)

    def stop(self, lab: PairLab) -> None:
        pair = self._pairs.pop(lab.tag, None)
        if pair is not None:
            pair.stop()


class VoxnodeImpl:
    """voxnode's own failover: two real agents with an ``ha`` section (lab/pair/voxnode.py)."""

    configures_addresses = True
    heartbeat_port = 694
    heartbeat: tuple[str, int | None] = ("udp", heartbeat_port)
    ethernet_heartbeat = 0x88B5

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.name = f"voxnode-{profile}"
        self.with_arbiter = False  # the l2-cut case runs the pair with its arbiter
        self.heartbeat_interval_s = TIMINGS[HAProfile(profile)].interval
        self.recovery_timeout_s = 10.0
        self._pairs: dict[str, VoxnodePair] = {}

    def start(self, lab: PairLab) -> None:
        extra = ({"arbiter": {"address": GATEWAY_IP, "port": ARBITER_PORT}}
                 if self.with_arbiter else None)
        pair = VoxnodePair(lab, self.profile, extra)
        if self.with_arbiter:
            keyfile = lab.workdir / "arbiter.key"
            keyfile.write_text(pair.key + "\n")
            keyfile.chmod(0o600)
            lab.spawn("br", [str(Path(sys.executable).parent / "voxnode-arbiter"), "--listen",
                             f"{GATEWAY_IP}:{ARBITER_PORT}", "--key-file", str(keyfile)],
                      helper=True)
        self._pairs[lab.tag] = pair
        pair.start(stagger_s=0.3, timeout=30.0)

    def master(self, lab: PairLab) -> Node | None:
        return self._pairs[lab.tag].master()

    def graceful_switchover(self, lab: PairLab) -> float:
        return self._pairs[lab.tag].switchover()

    def stop(self, lab: PairLab) -> None:
        pair = self._pairs.pop(lab.tag, None)
        if pair is not None:
            pair.stop()


DEFAULT_IMPLS: dict[str, Callable[[], PairImpl]] = {
    "voxnode-standard": lambda: VoxnodeImpl("standard"),
    "voxnode-fast": lambda: VoxnodeImpl("fast"),
    "keepalived-1s": lambda: KeepalivedImpl(1.0),
    "keepalived-0.1s": lambda: KeepalivedImpl(0.1),
}
# Selectable only by naming them in --impl, once the HA commands exist.
OPTIONAL_IMPLS: dict[str, Callable[[], PairImpl]] = {
}


# --- running ---------------------------------------------------------------------------------


@dataclass
class Trial:
    case: str
    impl: str
    index: int
    gap_ms: float | None = None
    before: str | None = None
    after: str | None = None
    both_held_samples: int = 0
    interleaved: bool = False
    error: str | None = None


@dataclass
class Soak:
    impl: str
    seconds: float
    idle_cpu_pct: float | None = None
    idle_cpu_pids: int = 0
    false_failovers: int | None = None
    vip_holder_changes: int | None = None
    both_held_samples: int | None = None
    master_polls: int = 0
    impaired_heartbeat_packets: int | None = None
    error: str | None = None
    role_changes: list[dict[str, Any]] = field(default_factory=list)


def _lab(impl: PairImpl) -> PairLab:
    return PairLab(assign_node_addresses=not impl.configures_addresses)


def _start_steady(impl: PairImpl, lab: PairLab) -> Node:
    """Start the pair; its master once the client gets steady replies from it."""
    impl.start(lab)
    master = impl.master(lab)
    if master is None:
        raise LabError("no master after start")
    lab.wait_steady(master, for_s=0.5, timeout=10)
    return master


def run_trial(impl: PairImpl, case: str, index: int) -> Trial:
    trial = Trial(case=case, impl=impl.name, index=index)
    with _lab(impl) as lab:
        try:
            master = _start_steady(impl, lab)
            time.sleep(random.uniform(0.0, impl.heartbeat_interval_s))
            if case == "crash":
                at = lab.crash(master)
            elif case == "link-down":
                at = lab.link_down(master)
            elif case == "graceful":
                at = impl.graceful_switchover(lab)
            else:
                raise ValueError(f"unknown case {case!r} ({', '.join(CASES)})")
            until = lab.wait_steady(other(master), since=at, for_s=SETTLE_S,
                                    timeout=impl.recovery_timeout_s)
            report = lab.probe.report(at, until)
            trial.gap_ms = report.gap_ms
            trial.before, trial.after = report.before, report.after
            trial.interleaved = report.interleaved
            trial.both_held_samples = len(lab.both_held_samples(since=at))
        except (LabError, subprocess.SubprocessError, OSError) as exc:
            trial.error = str(exc)
        finally:
            impl.stop(lab)
    return trial


@dataclass
class FaultTrial:
    case: str
    impl: str
    index: int
    both_held_samples: int | None = None
    false_failovers: int | None = None  # node IP holder changes during the fault
    roles_after: dict[str, str | None] = field(default_factory=dict)
    flood_packets: int | None = None
    error: str | None = None


def flood_binary(out: Path) -> Path:
    binary = out / "flood"
    if not binary.exists() or binary.stat().st_mtime < FLOOD_SOURCE.stat().st_mtime:
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(FLOOD_SOURCE)], check=True)
    return binary


def run_fault(impl: PairImpl, case: str, index: int, flood: Path) -> FaultTrial:
    trial = FaultTrial(case=case, impl=impl.name, index=index)
    arbiter = case == "l2-cut" and isinstance(impl, VoxnodeImpl)
    if isinstance(impl, VoxnodeImpl):
        impl.with_arbiter = arbiter
    with _lab(impl) as lab:
        try:
            master = _start_steady(impl, lab)
            at = time.monotonic()
            floods: list[subprocess.Popen[str]] = []
            if case == "ip-partition":
                for node in NODES:
                    lab.ip(node, "route", "add", "blackhole", f"{NODE_ADDRESSES[other(node)]}/32")
            elif case == "l2-cut":
                lab.partition([master], [other(master)])
            elif case == "flood":
                ns = lab.node_ns("c")
                port = str(impl.heartbeat[1] or VoxnodeImpl.heartbeat_port)
                rate, seconds = "50000", f"{FAULT_HOLD_S:g}"
                floods = [subprocess.Popen(["ip", "netns", "exec", ns, str(flood), *argv],
                                           stdout=subprocess.PIPE, text=True)
                          for argv in (["udp", NODE_ADDRESSES[master], port, rate, seconds],
                                       ["l2", "eth0", rate, seconds])]
            else:
                raise ValueError(f"unknown fault case {case!r} ({', '.join(FAULT_CASES)})")
            time.sleep(FAULT_HOLD_S)
            if floods:
                trial.flood_packets = sum(int(p.communicate(timeout=30)[0].strip() or 0)
                                          for p in floods)
            trial.both_held_samples = len(lab.both_held_samples(since=at))
            trial.false_failovers = lab.holder_changes(at)
            trial.roles_after = {n: ("master" if impl.master(lab) == n else "other")
                                 for n in NODES}
        except (LabError, subprocess.SubprocessError, OSError, ValueError) as exc:
            trial.error = str(exc)
        finally:
            impl.stop(lab)
            if isinstance(impl, VoxnodeImpl):
                impl.with_arbiter = False
    return trial


def run_soak(impl: PairImpl, seconds: float, cpu_seconds: float) -> Soak:
    soak = Soak(impl=impl.name, seconds=seconds)
    with _lab(impl) as lab:
        try:
            master = _start_steady(impl, lab)
            if cpu_seconds > 0:
                pids = lab.implementation_pids()
                soak.idle_cpu_pids = len(pids)
                soak.idle_cpu_pct = round(cpu_percent(pids, cpu_seconds), 3)
            if seconds > 0:
                proto, port = impl.heartbeat
                for node in NODES:
                    lab.impair_heartbeat(node, loss_pct=5, delay_ms=50, jitter_ms=25,
                                         proto=proto, port=port)
                    if getattr(impl, "ethernet_heartbeat", None):
                        # voxnode's second heartbeat channel loses 5 % too
                        lab.drop_ethernet_frames(node, ethertype=impl.ethernet_heartbeat,
                                                 loss_pct=5)
                start = time.monotonic()
                last, changes = master, 0
                while time.monotonic() - start < seconds:
                    now = impl.master(lab)
                    soak.master_polls += 1
                    if now is not None and now != last:
                        changes += 1
                        soak.role_changes.append(
                            {"at_s": round(time.monotonic() - start, 3), "master": now})
                        last = now
                    time.sleep(SOAK_POLL_S)
                soak.impaired_heartbeat_packets = sum(
                    lab.heartbeat_impaired_packets(node) for node in NODES)
                soak.false_failovers = changes
                soak.vip_holder_changes = lab.holder_changes(start)
                soak.both_held_samples = len(lab.both_held_samples(since=start))
        except (LabError, subprocess.SubprocessError, OSError) as exc:
            soak.error = str(exc)
        finally:
            impl.stop(lab)
    return soak


# --- reporting -------------------------------------------------------------------------------


def summarize(gaps: Sequence[float]) -> dict[str, float] | None:
    if not gaps:
        return None
    ordered = sorted(gaps)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank
    return {"min": ordered[0], "median": round(statistics.median(ordered), 1), "p95": p95,
            "max": ordered[-1], "n": len(ordered)}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_report(trials: list[Trial], soaks: list[Soak], impls: list[str]) -> dict[str, Any]:
    stats: dict[str, dict[str, Any]] = {}
    for case in CASES:
        for impl in impls:
            rows = [t for t in trials if t.case == case and t.impl == impl]
            if not rows:
                continue
            ok = [t.gap_ms for t in rows if t.gap_ms is not None]
            stats.setdefault(case, {})[impl] = {
                "gap_ms": summarize(ok), "failed": sum(t.error is not None for t in rows),
                "trials": len(rows),
                "both_held_trials": sum(t.both_held_samples > 0 for t in rows),
                "interleaved_trials": sum(t.interleaved for t in rows),
            }
    anchors = [i for i in impls if i.startswith("keepalived-")]
    head = f"{'case':<10} {'implementation':<18} {'min':>6} {'median':>7} {'p95':>6} {'max':>6}"
    head += " ok/n " + "".join(f" {'÷' + a:>17}" for a in anchors) + "  both-held"
    print("\nclient gap, ms")
    print(head)
    for case, per_impl in stats.items():
        for impl, row in per_impl.items():
            gap = row["gap_ms"] or {}
            ratios = []
            for anchor in anchors:
                base = (per_impl.get(anchor, {}).get("gap_ms") or {}).get("median")
                mine = gap.get("median")
                ratios.append("-" if not base or mine is None else f"{mine / base:.2f}")
            row["ratio_of_median_to"] = dict(zip(anchors, ratios, strict=True))
            target = TARGETS_MS.get((impl, case))
            if target is not None and gap.get("median") is not None:
                row["target_median_ms"] = target
                row["target_met"] = gap["median"] <= target
            good = row["trials"] - row["failed"]
            print(f"{case:<10} {impl:<18} {_fmt(gap.get('min')):>6}"
                  f" {_fmt(gap.get('median')):>7} {_fmt(gap.get('p95')):>6}"
                  f" {_fmt(gap.get('max')):>6} {good:>2}/{row['trials']:<2}"
                  + "".join(f" {r:>17}" for r in ratios) + f"  {row['both_held_trials']}")
    for trial in trials:
        if trial.error:
            print(f"  failed: {trial.case} {trial.impl} #{trial.index}: {trial.error}")
    if soaks:
        print("\nsoak (5% loss, 50±25 ms jitter on both nodes' heartbeat) and idle CPU")
        print(f"{'implementation':<18} {'seconds':>7} {'false failovers':>15} "
              f"{'VIP moves':>9} {'both-held':>9} {'idle CPU %':>10}")
        for soak in soaks:
            cpu = "-" if soak.idle_cpu_pct is None else f"{soak.idle_cpu_pct:.2f}"
            print(f"{soak.impl:<18} {soak.seconds:>7g} {_fmt(soak.false_failovers):>15} "
                  f"{_fmt(soak.vip_holder_changes):>9} {_fmt(soak.both_held_samples):>9} "
                  f"{cpu:>10}" + (f"  error: {soak.error}" if soak.error else ""))
    return stats


def print_faults(faults: list[FaultTrial], impls: list[str]) -> dict[str, Any]:
    stats: dict[str, dict[str, Any]] = {}
    if not faults:
        return stats
    print(f"\nfaults held {FAULT_HOLD_S:g} s: samples with both nodes holding the node IP, "
          "holder changes (false failovers)")
    print(f"{'case':<13} {'implementation':<18} {'ok/n':>5} {'both-held':>9} "
          f"{'false failovers':>15}")
    for case in FAULT_CASES:
        for impl in impls:
            rows = [t for t in faults if t.case == case and t.impl == impl]
            if not rows:
                continue
            ok = [t for t in rows if t.error is None]
            row = {"trials": len(rows), "failed": len(rows) - len(ok),
                   "both_held_samples": sum(t.both_held_samples or 0 for t in ok),
                   "false_failovers": sum(t.false_failovers or 0 for t in ok)}
            stats.setdefault(case, {})[impl] = row
            print(f"{case:<13} {impl:<18} {len(ok):>2}/{len(rows):<2} "
                  f"{row['both_held_samples']:>9} {row['false_failovers']:>15}")
    for trial in faults:
        if trial.error:
            print(f"  failed: {trial.case} {trial.impl} #{trial.index}: {trial.error}")
    return stats


def _keepalived_version() -> str | None:
    if shutil.which("keepalived") is None:
        return None
    done = subprocess.run(["keepalived", "--version"], capture_output=True, text=True,
                          check=False, timeout=10)
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/failover", description=__doc__.split("\n")[0])
    parser.add_argument("--impl", default=",".join(DEFAULT_IMPLS),
                        help="comma-separated: " + ", ".join([*DEFAULT_IMPLS, *OPTIONAL_IMPLS]))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--faults", default=",".join(FAULT_CASES),
                        help="fault cases that must move nothing (empty: none)")
    parser.add_argument("--fault-trials", type=int, default=2)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--cpu-seconds", type=float, default=10.0)
    parser.add_argument("--json-out", type=Path, default=REPO / "out/bench/failover.json")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("bench/failover: needs root (network namespaces)", file=sys.stderr)
        return 2
    registry = {**DEFAULT_IMPLS, **OPTIONAL_IMPLS}
    names = [n.strip() for n in args.impl.split(",") if n.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    faults_wanted = [c.strip() for c in args.faults.split(",") if c.strip()]
    unknown = ([n for n in names if n not in registry] + [c for c in cases if c not in CASES]
               + [c for c in faults_wanted if c not in FAULT_CASES])
    if unknown:
        print(f"bench/failover: unknown {', '.join(unknown)}", file=sys.stderr)
        return 2
    tools = missing_tools(["keepalived"] if any(n.startswith("keepalived") for n in names)
                          else [])
    if tools:
        print(f"bench/failover: missing host tools: {', '.join(tools)}", file=sys.stderr)
        return 2
    random.seed(args.seed)
    impls = {name: registry[name]() for name in names}

    trials: list[Trial] = []
    started = time.monotonic()
    for case in cases:
        for index in range(args.trials):
            for name, impl in impls.items():  # interleaved: drift hits every implementation
                trial = run_trial(impl, case, index)
                trials.append(trial)
                print(f"{case:<10} {name:<18} #{index}: "
                      + (f"{trial.gap_ms:.0f} ms ({trial.before}->{trial.after})"
                         if trial.gap_ms is not None else f"failed: {trial.error}"), flush=True)
    faults: list[FaultTrial] = []
    flood = flood_binary(args.json_out.parent) if "flood" in faults_wanted else Path("/")
    for case in faults_wanted:
        for index in range(args.fault_trials):
            for name, impl in impls.items():
                fault = run_fault(impl, case, index, flood)
                faults.append(fault)
                print(f"{case:<13} {name:<18} #{index}: " + (
                    f"both-held {fault.both_held_samples}, false failovers "
                    f"{fault.false_failovers}" if fault.error is None
                    else f"failed: {fault.error}"), flush=True)
    soaks = []
    if args.soak_seconds > 0 or args.cpu_seconds > 0:
        for name, impl in impls.items():
            print(f"soak {name}: {args.cpu_seconds:g} s idle CPU, then {args.soak_seconds:g} s",
                  flush=True)
            soaks.append(run_soak(impl, args.soak_seconds, args.cpu_seconds))
    stats = print_report(trials, soaks, names)
    fault_stats = print_faults(faults, names)

    result = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "keepalived": _keepalived_version()},
        "args": {"impl": names, "cases": cases, "trials": args.trials,
                 "faults": faults_wanted, "fault_trials": args.fault_trials,
                 "soak_seconds": args.soak_seconds, "cpu_seconds": args.cpu_seconds,
                 "seed": args.seed},
        "duration_s": round(time.monotonic() - started, 1),
        "stats": stats,
        "fault_stats": fault_stats,
        "trials": [asdict(t) for t in trials],
        "faults": [asdict(t) for t in faults],
        "soak": [asdict(s) for s in soaks],
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json_out}")
    failed = (sum(t.error is not None for t in trials) + sum(s.error is not None for s in soaks)
              + sum(t.error is not None for t in faults))
    return 1 if failed else 0
