"""ha.arp.WitnessMonitor's bookkeeping without a kernel: a fake prober answers (at once, or
held until read, as a passive endpoint's socket holds them) and a fake clock dates them.
Pure logic: the witness MAC pinned at its first answer, a forged answer ignored and
reported, a silent pinned witness replaced only while the peer is heard, rounds repeated
until stopped. The same monitor on real kernels: tests/netns/test_ha_net.py."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection
from ipaddress import IPv4Address

import pytest

from ha.arp import WitnessMonitor

A_IP, W_IP = "10.91.0.1", "10.91.0.254"


class FakeProber:
    """Answers for the addresses in ``macs`` (the others never answer): at once, or, when
    ``passive``, held until ``drain()`` as a passive endpoint's socket holds them."""

    def __init__(self, macs: dict[str, str], *, passive: bool = False) -> None:
        self.macs = macs
        self.passive = passive
        self.queued: list[tuple[IPv4Address, str]] = []
        self.probed: list[tuple[str, str | None]] = []
        self.observers: list[tuple[Callable[[IPv4Address, str], None], set[IPv4Address]]] = []

    def send_probe(self, target: IPv4Address, *, sender_ip: IPv4Address | None) -> bool:
        self.probed.append((str(target), sender_ip and str(sender_ip)))
        mac = self.macs.get(str(target))
        if mac is not None:
            self.queued.append((target, mac))
        if not self.passive:
            self.drain()
        return True

    def drain(self) -> None:
        answers, self.queued = self.queued, []
        for target, mac in answers:
            for callback, ips in list(self.observers):
                if target in ips:
                    callback(target, mac)

    def observe(self, callback: Callable[[IPv4Address, str], None],
                ips: Collection[IPv4Address] | None = None) -> Callable[[], None]:
        entry = (callback, set(ips or ()))
        self.observers.append(entry)
        return lambda: self.observers.remove(entry)


async def test_witness_bookkeeping_with_a_fake_clock() -> None:
    now = [100.0]
    prober = FakeProber({"10.91.0.254": "02:00:00:00:00:fe"})
    monitor = WitnessMonitor(prober, [IPv4Address("10.91.0.254"), IPv4Address("10.91.0.253")],
                             interval=0.2, sender_ip=IPv4Address(A_IP),
                             clock=lambda: now[0])
    assert not monitor.reachable(now[0], 1.0)
    assert monitor.last_answer_age(now[0]) == float("inf")
    monitor.probe_once()
    assert prober.probed == [("10.91.0.254", A_IP), ("10.91.0.253", A_IP)]
    now[0] = 100.5
    assert monitor.reachable(now[0], 0.5) and not monitor.reachable(now[0], 0.4)
    assert monitor.last_answer_age(now[0]) == pytest.approx(0.5)
    assert monitor.details(now[0]) == [
        {"address": "10.91.0.254", "reachable": True, "last_seen_age_ms": 500,
         "mac": "02:00:00:00:00:fe", "other_macs": None},
        {"address": "10.91.0.253", "reachable": False, "last_seen_age_ms": None, "mac": None,
         "other_macs": None},
    ]
    prober.macs.clear()  # the witness is gone: its last sighting ages out
    monitor.probe_once()
    now[0] = 100.7
    assert monitor.details(now[0])[0]["reachable"] is False  # older than 3 x interval
    assert monitor.details(now[0])[0]["mac"] == "02:00:00:00:00:fe"
    monitor.stop()  # answers after stop are not taken
    assert prober.observers == []


async def test_answers_read_later_are_dated_by_the_round_they_answer() -> None:
    now = [100.0]
    back: list[float] = []
    prober = FakeProber({W_IP: "02:00:00:00:00:fe"}, passive=True)
    monitor = WitnessMonitor(prober, [IPv4Address(W_IP)], interval=0.1, stale_after=0.25,
                             clock=lambda: now[0], on_back=lambda: back.append(now[0]))
    monitor.probe_once()
    now[0] = 100.08
    assert monitor.last_answer_age(now[0]) == math.inf  # not read yet
    monitor.refresh()
    assert monitor.last_answer_age(now[0]) == pytest.approx(0.08)  # sent at 100.0
    assert back == [100.08] and monitor.streak(now[0]) == pytest.approx(0.08)
    now[0] = 100.1
    monitor.probe_once()  # reads nothing new, sends the next round
    prober.macs.clear()  # gone: the rounds at 100.2 and 100.3 get no answer
    for t in (100.2, 100.3):
        now[0] = t
        monitor.probe_once()
    now[0] = 100.36
    monitor.refresh()
    assert monitor.last_answer_age(now[0]) == pytest.approx(0.26)  # the answer to 100.1
    assert monitor.streak(now[0]) == 0.0  # older than stale_after: not reachable
    prober.macs[W_IP] = "02:00:00:00:00:fe"
    monitor.probe_once()
    now[0] = 100.45
    monitor.refresh()
    assert monitor.last_answer_age(now[0]) == pytest.approx(0.09)
    assert back == [100.08, 100.45]  # told when the witness came back


async def test_the_witness_mac_is_pinned_and_a_forged_answer_ignored() -> None:
    """A reply naming the witness from another MAC (a LAN host forging the gateway for an
    isolated master) is ignored and reported; the pinned witness still counts."""
    now = [100.0]
    impostors: list[tuple[str, str]] = []
    prober = FakeProber({W_IP: "02:00:00:00:00:fe"})
    monitor = WitnessMonitor(prober, [IPv4Address(W_IP)], interval=0.1, stale_after=0.25,
                             clock=lambda: now[0],
                             on_impostor=lambda ip, mac: impostors.append((str(ip), mac)))
    monitor.probe_once()
    assert monitor.last_answer_age(now[0]) == 0.0
    # the real witness goes away; a forger answers for it, again and again
    prober.macs[W_IP] = "02:66:66:66:66:66"
    for t in (100.1, 100.2, 100.3, 100.4):
        now[0] = t
        monitor.probe_once()
    assert monitor.last_answer_age(now[0]) == pytest.approx(0.4)  # not refreshed by it
    assert not monitor.reachable(now[0], 0.25)
    assert impostors == [(W_IP, "02:66:66:66:66:66")]  # reported once
    [detail] = monitor.details(now[0])
    assert detail["mac"] == "02:00:00:00:00:fe"
    assert detail["other_macs"]["mac"] == "02:66:66:66:66:66"
    assert detail["other_macs"]["count"] == 4
    assert monitor.impostors() == [(IPv4Address(W_IP), "02:66:66:66:66:66", 4)]


@pytest.mark.parametrize("peer_heard", [True, False])
async def test_a_silent_pinned_witness_is_replaced_only_while_the_peer_is_heard(
        peer_heard: bool) -> None:
    """The gateway was replaced (a new MAC), or a forger answered first at start: once the
    pinned MAC has been silent for a while, the new one is pinned, but only while the peer
    is heard; an isolated node is never talked into a witness by a forger."""
    now = [100.0]
    repinned: list[tuple[str, str, str]] = []
    prober = FakeProber({W_IP: "02:00:00:00:00:fe"})
    monitor = WitnessMonitor(prober, [IPv4Address(W_IP)], interval=0.1, stale_after=0.25,
                             clock=lambda: now[0], may_repin=lambda: peer_heard,
                             on_repin=lambda ip, old, new: repinned.append((str(ip), old, new)))
    monitor.probe_once()
    prober.macs[W_IP] = "02:00:00:00:00:aa"  # the new gateway
    now[0] = 102.0
    monitor.probe_once()  # the old MAC silent for 2 s: not yet
    assert monitor.last_answer_age(now[0]) == pytest.approx(2.0)
    now[0] = 105.5
    monitor.probe_once()
    [detail] = monitor.details(now[0])
    if peer_heard:
        assert repinned == [(W_IP, "02:00:00:00:00:fe", "02:00:00:00:00:aa")]
        assert detail["mac"] == "02:00:00:00:00:aa" and monitor.last_answer_age(now[0]) == 0
    else:
        assert repinned == [] and detail["mac"] == "02:00:00:00:00:fe"
        assert not monitor.reachable(now[0], 0.25)


async def test_witness_rounds_repeat_until_stopped() -> None:
    prober = FakeProber({W_IP: "02:00:00:00:00:fe"})
    monitor = WitnessMonitor(prober, [IPv4Address(W_IP)], interval=0.05)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.3)  # six periods: at least two rounds even on a loaded machine
    monitor.stop()
    await asyncio.wait_for(task, 1)
    count = len(prober.probed)
    assert count >= 2, prober.probed
    await asyncio.sleep(0.15)
    assert len(prober.probed) == count, "probing went on after stop"
    assert monitor.reachable(time.monotonic(), 1.0)


async def test_witness_run_stops_promptly() -> None:
    monitor = WitnessMonitor(FakeProber({}), [IPv4Address(W_IP)], interval=10)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    monitor.stop()
    await asyncio.wait_for(task, 1)
    assert time.monotonic() - started < 0.1
