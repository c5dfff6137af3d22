"""Low-level network I/O of the failover daemon: what every other ``ha`` module sends with.

This module owns the pieces that are not ARP or raw Ethernet (those live in ``ha.arp`` and
``ha.l2``): the typed error for every socket failure, the interface helpers, the raw
AF_PACKET socket opener they share, the UDP heartbeat channel and the unsolicited IPv6
Neighbour Advertisement sent when the node IP moves.

Everything runs on the asyncio loop of the daemon, without threads: sockets are
non-blocking, reads are driven by ``loop.add_reader`` and sends never wait (a datagram the
kernel cannot take now is dropped; heartbeats and announcements are repeated anyway).
The daemon runs inside the node's network namespace, so sockets are opened where it is.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address

from agent.errors import SubsystemError

log = logging.getLogger("voxnode.ha.net")

SIOCGIFHWADDR = 0x8927
ETH_ALEN = 6
ETH_HEADER = struct.Struct("!6s6sH")

# A send that fails with one of these is a lost datagram, not a broken socket: the link
# is down, the peer is gone, the queue is full or a firewall dropped it (EPERM from an
# nftables/iptables drop on output). Heartbeats are repeated, so these are not raised.
TRANSIENT_SEND_ERRNOS = frozenset({
    errno.EAGAIN, errno.ENOBUFS, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH,
    errno.EHOSTDOWN, errno.ECONNREFUSED, errno.EPERM, errno.ENXIO,
})


class HaNetError(SubsystemError):
    """A socket operation of the failover daemon failed; ``errno`` says why."""

    code = "ha_network_io"

    def __init__(self, message: str, *, errno_code: int, remedy: str | None = None) -> None:
        name = errno.errorcode.get(errno_code, str(errno_code))
        super().__init__(message, remedy=remedy, details={"errno": name})
        self.errno = errno_code


def _hint(code: int) -> str:
    """Why an errno usually happens here, for the operator (chosen by errno, never text)."""
    if code in (errno.EPERM, errno.EACCES):
        return " (the agent needs CAP_NET_RAW)"
    if code in (errno.ENODEV, errno.ENXIO):
        return " (no such interface in this network namespace)"
    if code == errno.ENETDOWN:
        return " (the interface is down)"
    if code == errno.EADDRNOTAVAIL:
        return " (the address is not configured on this node)"
    if code == errno.EADDRINUSE:
        return " (another process already uses it)"
    return ""


def net_error(action: str, exc: OSError) -> HaNetError:
    """``cannot ACTION: <strerror> (<hint>)`` from an OSError, typed by its errno."""
    code = exc.errno or errno.EIO
    return HaNetError(f"cannot {action}: {os.strerror(code)}{_hint(code)}", errno_code=code)


# --- interfaces -------------------------------------------------------------------------------


def format_mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != ETH_ALEN or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r} (expected aa:bb:cc:dd:ee:ff)")
    return bytes(int(p, 16) for p in parts)


def interface_index(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError as exc:
        # CPython raises this one without an errno; the kernel's answer was ENODEV.
        code = exc.errno or errno.ENODEV
        raise net_error(f"find interface {ifname}", OSError(code, os.strerror(code))) from exc


def interface_mac(ifname: str) -> str:
    """The interface's MAC as ``aa:bb:..``.

    Asked with the SIOCGIFHWADDR ioctl rather than read from /sys/class/net: a process that
    entered the namespace with setns() still sees the sysfs of the namespace it came from.
    """
    request = struct.pack("256s", ifname.encode()[:15])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, request)
    except OSError as exc:
        raise net_error(f"read the MAC address of {ifname}", exc) from exc
    return format_mac(answer[18:18 + ETH_ALEN])  # ifr_name[16], sa_family (2), sa_data


# --- classic BPF socket filters (linux/filter.h) ---------------------------------------------
#
# A raw socket wakes the daemon for every frame of its EtherType on the segment, its own
# outgoing ones included. A filter attached to the socket lets the kernel drop the frames
# the daemon would ignore anyway, so a busy LAN (every host's ARP requests) costs no CPU.

SO_ATTACH_FILTER = 26
BPF_LD_W_ABS, BPF_LD_H_ABS = 0x20, 0x28  # A = word / half-word at offset k
BPF_TAX = 0x07  # X = A
BPF_JEQ_K, BPF_JEQ_X = 0x15, 0x1D  # A == k / A == X
BPF_RET_K = 0x06
SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # ancillary load: the frame's PACKET_* type
BPF_LD_B_ABS = 0x30  # A = byte at offset k
ACCEPT = 0x40000  # bytes of the frame to keep: all of it
_INSN = struct.Struct("=HBBI")

Insn = tuple[int, str | int, str | int, int]  # (code, jump if true, jump if false, k)


def bpf_program(program: list[Insn | str]) -> bytes:
    """Assemble a classic BPF program: instructions ``(code, jt, jf, k)`` whose jump targets
    may be label names, and label strings marking the next instruction."""
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out = bytearray()
    for index, (code, jt, jf, k) in enumerate(insns):
        offsets = [labels[j] - index - 1 if isinstance(j, str) else j for j in (jt, jf)]
        if not all(0 <= o <= 255 for o in offsets):
            raise ValueError(f"BPF instruction {index}: jump out of range {offsets}")
        out += _INSN.pack(code, offsets[0], offsets[1], k)
    return bytes(out)


def not_outgoing(accept: list[Insn | str]) -> list[Insn | str]:
    """A filter that drops the frames this host sends (the tap sees them as
    PACKET_OUTGOING) and applies ``accept`` to the others; ``accept`` may jump to the
    labels ``"accept"`` and ``"drop"``."""
    return [
        (BPF_LD_W_ABS, 0, 0, SKF_AD_PKTTYPE),
        (BPF_JEQ_K, "drop", 0, socket.PACKET_OUTGOING),
        *accept,
        "accept", (BPF_RET_K, 0, 0, ACCEPT),
        "drop", (BPF_RET_K, 0, 0, 0),
    ]


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF program (``bpf_program``) to ``sock``."""
    count = len(program) // _INSN.size
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", count, ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_packet_socket(ifname: str, ethertype: int,
                       program: bytes | None = None) -> socket.socket:
    """A non-blocking AF_PACKET socket bound to ``ifname`` for one EtherType, with the BPF
    ``program`` attached before any frame can be queued."""
    try:
        # protocol 0: nothing is received until the bind below names the EtherType
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError as exc:
        raise net_error(f"open raw socket on {ifname}", exc) from exc
    try:
        sock.setblocking(False)
        if program is not None:
            attach_filter(sock, program)
        sock.bind((ifname, ethertype))
    except OSError as exc:
        sock.close()
        raise net_error(f"open raw socket on {ifname}", exc) from exc
    return sock


# Reads per wake-up of one socket: a flood of frames or datagrams must not keep the loop
# from sending the heartbeats (timers run between two wake-ups of a reader; what is left
# waits in the socket for the next one).
READ_BUDGET = 64


def waiting_frames(sock: socket.socket, what: str, budget: int = READ_BUDGET
                   ) -> Iterator[bytes]:
    """The frames queued on a raw socket now (at most ``budget``), without blocking. The
    ones this host sent never get here: every raw socket of the daemon carries a BPF
    filter that drops them (``not_outgoing``). ``recv``, not ``recvfrom``: CPython turns an
    AF_PACKET source address into an interface name with one more system call per frame."""
    for _ in range(budget):
        try:
            frame = sock.recv(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # ENETDOWN is queued once when the link goes down; the socket recovers by
            # itself when it comes back up.
            log.debug("%s: %s", what, os.strerror(exc.errno or 0))
            return
        yield frame


def send_frame(sock: socket.socket, frame: bytes, what: str) -> bool:
    """Send without waiting; False if the frame was dropped for a transient reason."""
    try:
        sock.send(frame)
    except OSError as exc:
        if exc.errno in TRANSIENT_SEND_ERRNOS:
            log.debug("dropped %s: %s", what, os.strerror(exc.errno or 0))
            return False
        raise net_error(f"send {what}", exc) from exc
    return True


# --- UDP heartbeats ---------------------------------------------------------------------------

DatagramHandler = Callable[[bytes, str], None]


SKF_NET_OFF = 0xFFF00000  # -0x100000: loads relative to the network (IP) header


def magic_filter(offset: int, magic: bytes, source: IPv4Address | IPv6Address | None = None
                 ) -> bytes:
    """A UDP socket filter that keeps only packets with ``magic`` (4 bytes) at ``offset``
    and, given ``source`` (IPv4), only from that address: junk, and anything another host
    sends to the port, is dropped by the kernel and never wakes the daemon."""
    program: list[Insn | str] = []
    if isinstance(source, IPv4Address):
        program += [(BPF_LD_W_ABS, 0, 0, SKF_NET_OFF + 12),  # the IPv4 source address
                    (BPF_JEQ_K, 0, "drop", int(source))]
    return bpf_program([
        *program,
        (BPF_LD_W_ABS, 0, 0, offset),
        (BPF_JEQ_K, 0, "drop", int.from_bytes(magic, "big")),
        (BPF_RET_K, 0, 0, ACCEPT),
        "drop", (BPF_RET_K, 0, 0, 0),
    ])


class UdpChannel:
    """UDP datagrams of the pair on one local address (one socket, both directions).

    Sends never wait and never raise for a lost datagram: ``send`` returns the OSError
    (or None), so the caller keeps the state of the channel and every other channel
    carries on whatever happens to this one. A filter in the kernel keeps datagrams that
    do not start with ``magic`` out of the socket; the rest is read ``READ_BUDGET`` at a
    time."""

    def __init__(self, sock: socket.socket, port: int, on_datagram: DatagramHandler) -> None:
        self._sock = sock
        self._port = port
        self._on_datagram = on_datagram
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def open(cls, local_ip: IPv4Address | IPv6Address, port: int,
                   on_datagram: DatagramHandler, *, magic: bytes | None = None,
                   source: IPv4Address | IPv6Address | None = None) -> UdpChannel:
        family = socket.AF_INET6 if local_ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # no SO_REUSEADDR: with it, another process that sets it too could bind the same
            # address and port and receive the heartbeats (UDP has no TIME_WAIT to wait out)
            sock.setblocking(False)
            if magic is not None:
                attach_filter(sock, magic_filter(8, magic, source))  # after the UDP header
            sock.bind((str(local_ip), port))
        except OSError as exc:
            sock.close()
            raise net_error(f"listen on {local_ip} port {port}", exc) from exc
        return cls(sock, port, on_datagram)

    @property
    def local_port(self) -> int:
        return int(self._sock.getsockname()[1])

    def send(self, payload: bytes, peer_ip: IPv4Address | IPv6Address,
             port: int | None = None) -> OSError | None:
        """Send one datagram (to the same port by default); the error if it failed."""
        try:
            self._sock.sendto(payload, (str(peer_ip), port or self._port))
        except OSError as exc:
            return exc
        return None

    def drain(self) -> None:
        """Read the datagrams waiting now without waiting for the loop to say so."""
        self._readable()

    def _readable(self) -> None:
        for _ in range(READ_BUDGET):
            try:
                payload, source = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # A queued ICMP error surfaces here once; the socket itself is still good.
                log.debug("UDP socket: %s", os.strerror(exc.errno or 0))
                return
            self._on_datagram(payload, source[0])

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


# --- IPv6 unsolicited Neighbour Advertisement -------------------------------------------------

ICMPV6_NEIGHBOUR_ADVERTISEMENT = 136
NA_FLAG_OVERRIDE = 0x20
ND_OPT_TARGET_LINKADDR = 2
ALL_NODES = "ff02::1"


def neighbour_advertisement(target: IPv6Address, mac: str) -> bytes:
    """The ICMPv6 body of an unsolicited NA (the kernel fills in the checksum).

    Override set so neighbours replace the old MAC at once; solicited clear (RFC 4861
    7.2.6); router clear, because a PBX node is not a router.
    """
    header = struct.pack("!BBHB3x", ICMPV6_NEIGHBOUR_ADVERTISEMENT, 0, 0, NA_FLAG_OVERRIDE)
    option = struct.pack("!BB6s", ND_OPT_TARGET_LINKADDR, 1, parse_mac(mac))
    return header + target.packed + option


def send_unsolicited_na(ifname: str, address: IPv6Address) -> None:
    """Tell every node on ``ifname``'s link that ``address`` is now at our MAC."""
    index = interface_index(ifname)
    body = neighbour_advertisement(address, interface_mac(ifname))
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    except OSError as exc:
        raise net_error(f"open raw ICMPv6 socket on {ifname}", exc) from exc
    with sock:
        try:
            # Receivers drop ND messages whose hop limit is not 255 (RFC 4861 7.1.2).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            sock.sendto(body, (ALL_NODES, 0, 0, index))
        except OSError as exc:
            raise net_error(f"send a neighbour advertisement for {address} on {ifname}",
                            exc) from exc
