"""ha.net / ha.arp / ha.l2 against real kernels: three node namespaces on one bridge.

Node ``a`` (10.91.0.1), node ``b`` (10.91.0.2) and a witness ``w`` (10.91.0.254) each have
an ``eth0`` veth whose other end is a port of ``br0`` in a fourth namespace. The code under
test runs in Python processes started with ``ip netns exec`` (the daemon's own way to run);
what the kernels did is read back with ``ip -j`` or a raw capture. Only 10.x and fd00::
addresses; nothing leaves the namespaces. The witness monitor's bookkeeping without a
kernel (MAC pinning, forged answers, fake clock) is in tests/unit/test_ha_witness.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.netns.conftest import REPO, Netns, _namespace

pytestmark = pytest.mark.root

A_IP, B_IP, W_IP = "10.91.0.1", "10.91.0.2", "10.91.0.254"
NOBODY_IP = "10.91.0.77"
NODE_IP = "10.91.0.100"
PORT = 5405

# One operation per process: argv[1] the operation, argv[2] its JSON arguments. Long-running
# operations print "ready" once listening; every result is one JSON line.
DRIVER = r"""
import asyncio, json, socket, struct, sys, time
from ipaddress import IPv4Address, IPv6Address, ip_address
from agent.errors import VoxnodeError
from ha.arp import ArpEndpoint, WitnessMonitor
from ha.l2 import L2Channel
from ha.net import UdpChannel, send_unsolicited_na

def out(value):
    print(json.dumps(value), flush=True)

async def probe(ifname, targets, sender, timeout):
    arp = await ArpEndpoint.open(ifname)
    async def one(target):
        start = time.perf_counter()
        mac = await arp.probe(IPv4Address(target), timeout=timeout,
                              sender_ip=IPv4Address(sender) if sender else None)
        return {"target": target, "mac": mac, "ms": (time.perf_counter() - start) * 1000}
    try:
        out(await asyncio.gather(*(one(t) for t in targets)))
    finally:
        arp.close()

async def announce(ifname, ip, count):
    arp = await ArpEndpoint.open(ifname)
    arp.announce(IPv4Address(ip), count)
    arp.close()
    out({"mac": arp.mac})

async def observe(ifname, ips, seconds):
    arp = await ArpEndpoint.open(ifname)
    seen = []
    arp.observe(lambda ip, mac: seen.append([str(ip), mac]),
                None if ips is None else [IPv4Address(i) for i in ips])
    out("ready")
    await asyncio.sleep(seconds)
    arp.close()
    out(seen)

async def udp_echo(ip, port, count, seconds):
    done = asyncio.Event()
    received = []
    def on_datagram(payload, source):
        received.append(payload.decode())
        channel.send(b"echo:" + payload, source)
        if len(received) >= count:
            done.set()
    channel = await UdpChannel.open(ip_address(ip), port, on_datagram)
    out("ready")
    try:
        async with asyncio.timeout(seconds):
            await done.wait()
    except TimeoutError:
        pass
    channel.close()
    out(received)

async def udp_ping(ip, peer, port, n, timeout):
    replies = asyncio.Queue()
    channel = await UdpChannel.open(ip_address(ip), port, lambda p, s: replies.put_nowait(p))
    rtts, lost, sent = [], 0, []
    for i in range(n):
        start = time.perf_counter()
        sent.append(channel.send(f"ping {i}".encode(), ip_address(peer)) is None)
        try:
            async with asyncio.timeout(timeout):
                reply = await replies.get()
            assert reply == f"echo:ping {i}".encode(), reply
            rtts.append((time.perf_counter() - start) * 1000)
        except TimeoutError:
            lost += 1
    channel.close()
    out({"rtts_ms": rtts, "lost": lost, "sent": sent})

async def l2_echo(ifname, count, seconds):
    done = asyncio.Event()
    received = []
    def on_frame(payload, source):
        received.append([payload[4:].decode(), source])
        channel.send(b"VXHAecho:" + payload[4:], source)
        if len(received) >= count:
            done.set()
    channel = await L2Channel.open(ifname, on_frame)
    out("ready")
    try:
        async with asyncio.timeout(seconds):
            await done.wait()
    except TimeoutError:
        pass
    channel.close()
    out(received)

async def l2_ping(ifname, dst, n, timeout):
    replies = asyncio.Queue()
    other = []
    def on_frame(payload, source):
        if payload.startswith(b"VXHAecho:"):
            replies.put_nowait([payload[4:], source])
        else:
            other.append(payload[4:].decode())
    channel = await L2Channel.open(ifname, on_frame)
    rtts, lost, sources = [], 0, set()
    for i in range(n):
        start = time.perf_counter()
        channel.send(f"VXHAping {i}".encode(), dst)
        try:
            async with asyncio.timeout(timeout):
                payload, source = await replies.get()
            assert payload == f"echo:ping {i}".encode(), payload
            sources.add(source)
            rtts.append((time.perf_counter() - start) * 1000)
        except TimeoutError:
            lost += 1
    await asyncio.sleep(0.05)  # our own broadcasts, if they were not ignored, arrive by now
    channel.close()
    out({"rtts_ms": rtts, "lost": lost, "sources": sorted(sources), "other": other,
         "mac": channel.mac})

async def witness(ifname, witnesses, interval, seconds):
    arp = await ArpEndpoint.open(ifname)
    monitor = WitnessMonitor(arp, [IPv4Address(w) for w in witnesses], interval=interval)
    task = asyncio.create_task(monitor.run())
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        out({"t": now - start, "reachable": monitor.reachable(now, 3 * interval),
             "details": monitor.details(now)})
        await asyncio.sleep(0.02)
    monitor.stop()
    await asyncio.wait_for(task, 2)
    arp.close()
    out("stopped")

async def na(ifname, address):
    send_unsolicited_na(ifname, IPv6Address(address))
    out("sent")

async def capture_na(ifname, seconds):
    # An independent parser of what is on the wire: Ethernet, IPv6, ICMPv6 NA.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
    sock.bind((ifname, 0x86DD))
    sock.settimeout(0.05)
    out("ready")
    found, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline and not found:
        try:
            frame = sock.recv(2048)
        except TimeoutError:
            continue
        ip6 = frame[14:54]
        body = frame[54:]
        if ip6[6] != 58 or body[0] != 136:
            continue
        found.append({
            "dst_mac": ":".join(f"{b:02x}" for b in frame[0:6]),
            "src_mac": ":".join(f"{b:02x}" for b in frame[6:12]),
            "hop_limit": ip6[7], "dst": str(IPv6Address(ip6[24:40])),
            "code": body[1], "flags": body[4], "target": str(IPv6Address(body[8:24])),
            "option": [body[24], body[25], ":".join(f"{b:02x}" for b in body[26:32])],
        })
    out(found)

async def errors(calls):
    for call, *args in calls:
        try:
            if call == "arp":
                (await ArpEndpoint.open(*args)).close()
            elif call == "l2":
                (await L2Channel.open(args[0], lambda p, s: None)).close()
            elif call == "udp":
                (await UdpChannel.open(ip_address(args[0]), args[1], lambda p, s: None)).close()
            elif call == "na":
                send_unsolicited_na(args[0], IPv6Address(args[1]))
            out({"ok": True})
        except VoxnodeError as exc:
            out({"error": type(exc).__name__, "code": exc.code, "message": exc.message,
                 "errno": exc.details.get("errno")})

asyncio.run(globals()[sys.argv[1]](**json.loads(sys.argv[2])))
"""


class Background:
    """A driver process left running; lines of its stdout read with a timeout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._buffer = b""

    def line(self, timeout: float = 10.0) -> Any:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise AssertionError(f"no line from the driver within {timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                _, err = self.proc.communicate(timeout=5)
                raise AssertionError(f"driver exited ({self.proc.returncode}):\n"
                                     f"{err.decode(errors='replace')}")
            self._buffer += chunk
        text, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(text)


@dataclass
class Lan:
    bridge: Netns
    nodes: dict[str, Netns]
    spawned: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __getitem__(self, name: str) -> Netns:
        return self.nodes[name]

    def mac(self, name: str) -> str:
        return str(self.nodes[name].ip_json("link", "show", "eth0")[0]["address"])

    def drive(self, name: str, op: str, **args: Any) -> Any:
        done = self.nodes[name].run(sys.executable, "-c", DRIVER, op, json.dumps(args))
        if done.returncode != 0:
            raise AssertionError(f"{op} in {name} failed:\n{done.stderr}")
        return json.loads(done.stdout.splitlines()[-1])

    def drive_lines(self, name: str, op: str, **args: Any) -> list[Any]:
        done = self.nodes[name].run(sys.executable, "-c", DRIVER, op, json.dumps(args))
        if done.returncode != 0:
            raise AssertionError(f"{op} in {name} failed:\n{done.stderr}")
        return [json.loads(line) for line in done.stdout.splitlines()]

    def spawn(self, name: str, op: str, **args: Any) -> Background:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.nodes[name].name, sys.executable, "-c", DRIVER, op,
             json.dumps(args)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        self.spawned.append(proc)
        return Background(proc)


def _set_sysctl(ns: Netns, key: str, value: str) -> None:
    done = ns.run("sh", "-c", f"echo {value} > /proc/sys/{key.replace('.', '/')}")
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def build_lan() -> Iterator[Lan]:
    """The bridge and the three nodes, torn down (with every driver left running) on exit."""
    addresses = {"a": (A_IP, "fd00:91::1"), "b": (B_IP, "fd00:91::2"),
                 "w": (W_IP, "fd00:91::fe")}
    with contextlib.ExitStack() as stack:
        bridge = stack.enter_context(_namespace())
        bridge.ip("link", "add", "br0", "type", "bridge", "forward_delay", "0")
        bridge.ip("link", "set", "br0", "up")
        nodes = {}
        for name, (ip4, ip6) in addresses.items():
            ns = nodes[name] = stack.enter_context(_namespace())
            port = f"p-{name}"
            bridge.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                      ns.name)
            bridge.ip("link", "set", port, "master", "br0", "up")
            # IPv6 usable at once: no DAD wait for the link-local source of the NA.
            _set_sysctl(ns, "net.ipv6.conf.eth0.accept_dad", "0")
            ns.ip("addr", "add", f"{ip4}/24", "dev", "eth0")
            ns.ip("addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
            ns.ip("link", "set", "eth0", "up")
        handle = Lan(bridge, nodes)
        try:
            yield handle
        finally:
            for proc in handle.spawned:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()


@pytest.fixture
def lan() -> Iterator[Lan]:
    with build_lan() as handle:
        yield handle


def neighbour_mac(ns: Netns, ip: str) -> str | None:
    entries = ns.ip_json("neigh", "show", ip, "dev", "eth0")
    return entries[0].get("lladdr") if entries else None


# --- ARP probes --------------------------------------------------------------------------------


def test_probe_returns_the_neighbours_mac_and_none_when_nobody_answers(lan: Lan) -> None:
    lan["w"].ip("link", "set", "eth0", "down")  # W's address exists, its host is off the LAN
    results = lan.drive("a", "probe", ifname="eth0", targets=[B_IP, NOBODY_IP, W_IP],
                        sender=None, timeout=0.3)
    by_target = {r["target"]: r for r in results}
    assert by_target[B_IP]["mac"] == lan.mac("b")
    assert by_target[B_IP]["ms"] < 100
    for silent in (NOBODY_IP, W_IP):
        assert by_target[silent]["mac"] is None
        assert 250 <= by_target[silent]["ms"] < 600
    # An RFC 5227 probe (sender 0.0.0.0) leaves no trace of us in B's neighbour table.
    assert neighbour_mac(lan["b"], A_IP) is None


def test_probe_with_a_sender_ip_and_concurrent_probes(lan: Lan) -> None:
    # The silent probe goes first: probes that waited for each other would show it.
    results = lan.drive("a", "probe", ifname="eth0", targets=[NOBODY_IP, B_IP, W_IP, B_IP],
                        sender=A_IP, timeout=0.5)
    assert [r["mac"] for r in results] == [None, lan.mac("b"), lan.mac("w"), lan.mac("b")]
    assert results[0]["ms"] >= 450
    assert all(r["ms"] < 100 for r in results[1:])
    # A request with our sender IP is a normal request: B learnt us from it.
    assert neighbour_mac(lan["b"], A_IP) == lan.mac("a")


# --- gratuitous ARP ----------------------------------------------------------------------------


def test_gratuitous_arp_moves_the_node_ip_in_an_observers_cache(lan: Lan) -> None:
    a, b, w = lan["a"], lan["b"], lan["w"]
    a.ip("addr", "add", f"{NODE_IP}/24", "dev", "eth0", "label", "eth0:vip")
    done = w.run("ping", "-c", "1", "-W", "2", NODE_IP)
    assert done.returncode == 0, done.stdout + done.stderr
    assert neighbour_mac(w, NODE_IP) == lan.mac("a")

    a.ip("addr", "del", f"{NODE_IP}/24", "dev", "eth0")
    b.ip("addr", "add", f"{NODE_IP}/24", "dev", "eth0", "label", "eth0:vip")
    time.sleep(0.2)
    assert neighbour_mac(w, NODE_IP) == lan.mac("a"), "the kernel announced by itself"

    assert lan.drive("b", "announce", ifname="eth0", ip=NODE_IP, count=1) == {
        "mac": lan.mac("b")}
    deadline = time.monotonic() + 2
    while neighbour_mac(w, NODE_IP) != lan.mac("b") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert neighbour_mac(w, NODE_IP) == lan.mac("b")
    # ... and with arp_accept=0 it did not create an entry where there was none.
    assert neighbour_mac(a, NODE_IP) is None


def test_observe_reports_who_else_claims_the_node_ip(lan: Lan) -> None:
    watcher = lan.spawn("a", "observe", ifname="eth0", ips=[NODE_IP], seconds=1.5)
    assert watcher.line() == "ready"
    lan.drive("b", "announce", ifname="eth0", ip="10.91.0.101", count=1)  # not watched
    lan.drive("b", "announce", ifname="eth0", ip=NODE_IP, count=2)
    # B's ordinary request for A (B_IP is not watched either) must not show up.
    lan.drive("b", "probe", ifname="eth0", targets=[A_IP], sender=B_IP, timeout=0.3)
    assert watcher.line() == [[NODE_IP, lan.mac("b")]] * 4  # request + reply form, twice


def test_the_kernel_hands_the_endpoint_only_replies_and_announcements(lan: Lan) -> None:
    watcher = lan.spawn("a", "observe", ifname="eth0", ips=None, seconds=1.5)
    assert watcher.line() == "ready"
    # ordinary requests (B for A, B for W), and A's kernel answering B: none reaches A's
    # endpoint; its own probe for W does not either, W's reply does
    lan.drive("b", "probe", ifname="eth0", targets=[A_IP, W_IP], sender=B_IP, timeout=0.3)
    lan.drive("a", "probe", ifname="eth0", targets=[W_IP], sender=A_IP, timeout=0.3)
    lan.drive("b", "announce", ifname="eth0", ip=NODE_IP, count=1)
    assert watcher.line() == [[W_IP, lan.mac("w")], [NODE_IP, lan.mac("b")],
                              [NODE_IP, lan.mac("b")]]


# --- heartbeat channels ------------------------------------------------------------------------


def _drop_udp(ns: Netns) -> None:
    rules = ("add table inet vxt\n"
             "add chain inet vxt in { type filter hook input priority 0; }\n"
             "add chain inet vxt out { type filter hook output priority 0; }\n"
             "add rule inet vxt in meta l4proto udp drop\n"
             "add rule inet vxt out meta l4proto udp drop\n")
    done = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input=rules,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_udp_channel_round_trip(lan: Lan) -> None:
    echo = lan.spawn("b", "udp_echo", ip=B_IP, port=PORT, count=5, seconds=10)
    assert echo.line() == "ready"
    ping = lan.drive("a", "udp_ping", ip=A_IP, peer=B_IP, port=PORT, n=5, timeout=1.0)
    assert ping["lost"] == 0 and len(ping["rtts_ms"]) == 5
    assert echo.line() == [f"ping {i}" for i in range(5)]


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables (nft)")
def test_l2_channel_round_trip_survives_a_udp_drop_rule(lan: Lan) -> None:
    _drop_udp(lan["a"])
    _drop_udp(lan["b"])
    # The rule works: UDP heartbeats are now lost (sends are refused, nothing comes back).
    echo = lan.spawn("b", "udp_echo", ip=B_IP, port=PORT, count=1, seconds=1)
    assert echo.line() == "ready"
    ping = lan.drive("a", "udp_ping", ip=A_IP, peer=B_IP, port=PORT, n=2, timeout=0.2)
    assert ping["lost"] == 2 and ping["sent"] == [False, False]
    assert echo.line() == []

    # Hairpin on A's bridge port sends A's broadcasts back to A, as a switching loop or a
    # reflective relay would: those frames carry A's own source MAC and must be ignored.
    lan.bridge.ip("link", "set", "p-a", "type", "bridge_slave", "hairpin", "on")
    echo = lan.spawn("b", "l2_echo", ifname="eth0", count=6, seconds=10)
    assert echo.line() == "ready"
    broadcast = lan.drive("a", "l2_ping", ifname="eth0", dst="ff:ff:ff:ff:ff:ff", n=3,
                          timeout=1.0)
    unicast = lan.drive("a", "l2_ping", ifname="eth0", dst=lan.mac("b"), n=3, timeout=1.0)
    for result in (broadcast, unicast):
        assert result["lost"] == 0 and result["sources"] == [lan.mac("b")]
        assert result["other"] == []  # our own frames, reflected back, were ignored
    assert echo.line() == [[f"ping {i}", lan.mac("a")] for i in (0, 1, 2)] * 2


# --- witness -----------------------------------------------------------------------------------


def test_witness_monitor_sees_the_witness_go_away(lan: Lan) -> None:
    interval = 0.1
    monitor = lan.spawn("a", "witness", ifname="eth0", witnesses=[W_IP, NOBODY_IP],
                        interval=interval, seconds=4.0)
    status = monitor.line()
    while not status["reachable"]:
        assert status["t"] < 1.0, "the witness was never reachable"
        status = monitor.line()
    witness, nobody = status["details"]
    assert witness["address"] == W_IP and witness["reachable"]
    assert witness["mac"] == lan.mac("w") and witness["last_seen_age_ms"] <= 300
    assert nobody == {"address": NOBODY_IP, "reachable": False, "last_seen_age_ms": None,
                      "mac": None, "other_macs": None}

    lan["w"].ip("link", "set", "eth0", "down")
    went_down = status["t"]
    while status["reachable"]:
        status = monitor.line()
    # Lost within the 3-interval window (plus a probe timeout and scheduling slack).
    assert status["t"] - went_down < 6 * interval
    assert status["details"][0]["reachable"] is False
    assert status["details"][0]["last_seen_age_ms"] > 3 * interval * 1000
    while status != "stopped":
        status = monitor.line()


# --- IPv6 --------------------------------------------------------------------------------------


def test_unsolicited_na_is_on_the_wire(lan: Lan) -> None:
    lan["a"].ip("addr", "add", "fd00:91::100/64", "dev", "eth0", "nodad")
    capture = lan.spawn("w", "capture_na", ifname="eth0", seconds=3)
    assert capture.line() == "ready"
    assert lan.drive("a", "na", ifname="eth0", address="fd00:91::100") == "sent"
    [seen] = capture.line()
    assert seen == {
        "dst_mac": "33:33:00:00:00:01", "src_mac": lan.mac("a"), "hop_limit": 255,
        "dst": "ff02::1", "code": 0, "flags": 0x20, "target": "fd00:91::100",
        "option": [2, 1, lan.mac("a")],
    }


# --- errors ------------------------------------------------------------------------------------


def test_errors_are_operator_sentences_by_errno(lan: Lan) -> None:
    results = lan.drive_lines("a", "errors", calls=[
        ["arp", "nope0"], ["l2", "nope0"], ["udp", "10.91.0.99", PORT],
        ["na", "nope0", "fd00:91::100"]])
    assert results == [
        {"error": "HaNetError", "code": "ha_network_io", "errno": "ENODEV",
         "message": "cannot open raw socket on nope0: No such device "
                    "(no such interface in this network namespace)"},
        {"error": "HaNetError", "code": "ha_network_io", "errno": "ENODEV",
         "message": "cannot open raw socket on nope0: No such device "
                    "(no such interface in this network namespace)"},
        {"error": "HaNetError", "code": "ha_network_io", "errno": "EADDRNOTAVAIL",
         "message": "cannot listen on 10.91.0.99 port 5405: Cannot assign "
                    "requested address (the address is not configured on this node)"},
        {"error": "HaNetError", "code": "ha_network_io", "errno": "ENODEV",
         "message": "cannot find interface nope0: No such device "
                    "(no such interface in this network namespace)"},
    ]


@pytest.mark.skipif(shutil.which("capsh") is None, reason="needs capsh")
def test_missing_cap_net_raw_is_named(lan: Lan) -> None:
    code = f"{DRIVER.rsplit('asyncio.run', 1)[0]}\nasyncio.run(errors([['arp', 'eth0']]))"
    done = lan["a"].run("capsh", "--drop=cap_net_raw", "--", "-c",
                        'exec "$0" -c "$1"', sys.executable, code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "error": "HaNetError", "code": "ha_network_io", "errno": "EPERM",
        "message": "cannot open raw socket on eth0: Operation not permitted "
                   "(the agent needs CAP_NET_RAW)"}
