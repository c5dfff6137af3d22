"""The failover lab harness (lab/pair/harness.py) proven with keepalived as the pair.

keepalived is the anchor: if the harness measures it as platform-notes says (takeover
after a crash or a link loss, a short gap on a graceful stop) and detects its split brain
when only the heartbeat is lost, the same harness can judge voxnode's own failover.
Advert 0.1 s (VRRPv3) keeps the module short; one crash runs with the default 1 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from lab.pair.harness import PairLab
from lab.pair.keepalived import KeepalivedPair, keepalived_lab
from lab.pair.topology import (
    GATEWAY_IP,
    NODE_ADDRESSES,
    NODES,
    lab_namespaces,
    missing_tools,
    namespace_pids,
    other,
)

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    missing = missing_tools(["keepalived"])
    if missing:
        pytest.skip(f"needs host tools: {', '.join(missing)} (Makefile installs them)")


@pytest.fixture
def fast_pair() -> Iterator[tuple[PairLab, KeepalivedPair]]:
    with keepalived_lab(0.1) as lab_and_pair:
        yield lab_and_pair


def _wait(condition: str, check: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {condition}")
        time.sleep(0.05)


def test_crash_of_the_master_with_advert_1s_is_taken_over_within_5s() -> None:
    with keepalived_lab(1.0) as (lab, pair):
        master = pair.master()
        assert master is not None
        at = lab.crash(master)
        until = lab.wait_steady(other(master), since=at, for_s=0.5, timeout=8)
        report = lab.probe.report(at, until)
        assert report.recovered and report.before == master and report.after == other(master)
        assert 1000 < report.gap_ms < 5000, report
        assert pair.state(master) == "DEAD" and pair.state(other(master)) == "MASTER"
        # the frozen node's kernel keeps the node IP: counted only when asked to
        assert lab.both_held_samples(since=at) == []
        time.sleep(0.1)
        assert lab.both_held_samples(since=at, count_crashed=True) != []
        assert not report.interleaved


def test_link_down_of_the_master_moves_the_node_ip_without_overlap(
        fast_pair: tuple[PairLab, KeepalivedPair]) -> None:
    lab, pair = fast_pair
    master = pair.master()
    assert master is not None
    at = lab.link_down(master)
    until = lab.wait_steady(other(master), since=at, for_s=0.5, timeout=5)
    report = lab.probe.report(at, until)
    assert report.recovered and report.after == other(master)
    assert report.gap_ms < 1000, report
    time.sleep(0.1)
    assert lab.both_held_samples(since=at - 1) == []
    assert lab.vip_holders() == {other(master)}
    assert pair.state(master) == "FAULT"


def test_graceful_stop_hands_over_quickly(fast_pair: tuple[PairLab, KeepalivedPair]) -> None:
    lab, pair = fast_pair
    master = pair.master()
    assert master is not None
    at = pair.stop_node(master)
    until = lab.wait_steady(other(master), since=at, for_s=0.5, timeout=5)
    report = lab.probe.report(at, until)
    assert report.after == other(master) and report.gap_ms < 500, report
    assert lab.both_held_samples(since=at - 1) == []


def test_heartbeat_only_loss_is_detected_as_split_brain(
        fast_pair: tuple[PairLab, KeepalivedPair]) -> None:
    lab, pair = fast_pair
    at = lab.block_heartbeat("vrrp")
    _wait("both nodes hold the node IP", lambda: lab.both_held_samples(since=at), 3)
    assert all(pair.state(node) == "MASTER" for node in NODES)
    lab.unblock_heartbeat()
    healed = time.monotonic()
    _wait("one holder again", lambda: len(lab.vip_holders()) == 1, 3)
    assert lab.both_held_samples(since=healed + 1.0) == []


def test_isolated_master_keeps_its_carrier_and_both_claim_the_node_ip(
        fast_pair: tuple[PairLab, KeepalivedPair]) -> None:
    lab, pair = fast_pair
    master = pair.master()
    assert master is not None
    at = lab.isolate(master)
    until = lab.wait_steady(other(master), since=at, for_s=0.5, timeout=5)
    assert lab.probe.report(at, until).gap_ms < 1000
    assert pair.state(master) == "MASTER"  # it hears nobody, so nothing tells it to stop
    assert lab.both_held_samples(since=at)
    lab.heal()
    _wait("one holder after heal", lambda: len(lab.vip_holders()) == 1, 3)


def test_partition_with_the_gateway_on_one_side(
        fast_pair: tuple[PairLab, KeepalivedPair]) -> None:
    lab, pair = fast_pair
    master = pair.master()
    assert master is not None
    lab.partition([master, "gw"], [other(master), "c"])
    assert _pings(lab, master, GATEWAY_IP)
    assert not _pings(lab, other(master), GATEWAY_IP)
    assert not _pings(lab, "c", NODE_ADDRESSES[master])
    assert _pings(lab, "c", NODE_ADDRESSES[other(master)])
    lab.heal()
    assert _pings(lab, other(master), GATEWAY_IP)  # neighbour entries re-resolve after heal


def _pings(lab: PairLab, member: str, address: str) -> bool:
    """Any of 5 pings 0.2 s apart answered."""
    done = lab.nsexec(member, "ping", "-n", "-q", "-c5", "-i0.2", "-W1", address, check=False)
    return done.returncode == 0


def test_flapping_link_ends_with_one_holder(fast_pair: tuple[PairLab, KeepalivedPair]) -> None:
    lab, pair = fast_pair
    master = pair.master()
    assert master is not None
    lab.flap(master, 3, down_s=0.3, up_s=0.3)
    _wait("one holder after flapping", lambda: len(lab.vip_holders()) == 1, 3)
    holder = next(iter(lab.vip_holders()))
    lab.wait_steady(holder, for_s=0.5, timeout=5)


def test_impaired_heartbeat_passes_through_the_queue(
        fast_pair: tuple[PairLab, KeepalivedPair]) -> None:
    lab, pair = fast_pair
    for node in NODES:
        lab.impair_heartbeat(node, loss_pct=0, delay_ms=20, jitter_ms=10)
    time.sleep(1.0)
    assert all(lab.heartbeat_impaired_packets(node) > 0 for node in NODES if
               pair.state(node) == "MASTER")
    assert len(lab.vip_holders()) == 1  # 10-30 ms late adverts are no failure
    for node in NODES:  # total loss of the heartbeat: the backup takes the node IP too
        lab.impair_heartbeat(node, loss_pct=100, delay_ms=0, jitter_ms=0)
    at = time.monotonic()
    _wait("both hold the node IP", lambda: lab.both_held_samples(since=at), 3)
    for node in NODES:
        lab.clear_heartbeat_impairment(node)
    _wait("one holder again", lambda: len(lab.vip_holders()) == 1, 3)


def test_teardown_removes_everything_even_on_failure() -> None:
    with pytest.raises(RuntimeError, match="boom"), PairLab() as lab:
        pair = KeepalivedPair(lab, 0.1)
        pair.start()
        pids = [pid for ns in lab.ns.values() for pid in namespace_pids(ns)]
        assert pids
        tag = lab.tag
        raise RuntimeError("boom")
    assert lab_namespaces(tag) == []
    assert not lab.workdir.exists()
    _wait("every process of the lab ended", lambda: not [p for p in pids if _alive(p)], 2)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
