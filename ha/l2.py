"""The second heartbeat path: raw Ethernet frames that no IP firewall rule can drop.

This module owns the frame format of that path. A frame is an Ethernet header with the
IEEE local experimental EtherType 0x88B5, a 2-byte payload length, the payload, and zero
padding up to the 60-byte Ethernet minimum (so the receiver needs the length to know where
the payload ends). nftables ``inet``/``ip`` rules and iptables never see these frames, so
a node that lost its UDP heartbeats to a firewall change still hears its peer here and
does not promote itself into a split brain.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable

from ha.net import (
    BPF_JEQ_K,
    BPF_LD_H_ABS,
    BPF_LD_W_ABS,
    ETH_HEADER,
    Insn,
    attach_filter,
    bpf_program,
    format_mac,
    not_outgoing,
    open_packet_socket,
    parse_mac,
    waiting_frames,
)

log = logging.getLogger("voxnode.ha.l2")

ETHERTYPE_LOCAL_EXPERIMENTAL = 0x88B5
ETH_MIN_FRAME = 60  # without the FCS, which the NIC adds
LENGTH = struct.Struct("!H")
MAX_PAYLOAD = 1500 - LENGTH.size  # one untagged frame at the standard MTU

FrameHandler = Callable[[bytes, str], None]

def l2_filter(source_mac: str | None = None) -> bytes:
    """Our own frames stay out of the socket, and so does anything that is not a voxnode
    message (the payload starts after the header and the 2-byte length); with
    ``source_mac`` (the peer's, once learnt), so does every other host's frame."""
    program: list[Insn | str] = []
    if source_mac is not None:
        raw = parse_mac(source_mac)
        program += [
            (BPF_LD_W_ABS, 0, 0, 6), (BPF_JEQ_K, 0, "drop", int.from_bytes(raw[:4], "big")),
            (BPF_LD_H_ABS, 0, 0, 10), (BPF_JEQ_K, 0, "drop", int.from_bytes(raw[4:], "big")),
        ]
    return bpf_program(not_outgoing([
        *program,
        (BPF_LD_W_ABS, 0, 0, ETH_HEADER.size + LENGTH.size),
        (BPF_JEQ_K, "accept", "drop", int.from_bytes(b"VXHA", "big")),
    ]))


L2_FILTER = l2_filter()


def pack_frame(dst_mac: bytes, src_mac: bytes, payload: bytes) -> bytes:
    frame = (ETH_HEADER.pack(dst_mac, src_mac, ETHERTYPE_LOCAL_EXPERIMENTAL)
             + LENGTH.pack(len(payload)) + payload)
    return frame.ljust(ETH_MIN_FRAME, b"\x00")


def unpack_payload(frame: bytes) -> bytes | None:
    """The payload of a received frame; None if it is shorter than its length says."""
    start = ETH_HEADER.size + LENGTH.size
    if len(frame) < start:
        return None
    (length,) = LENGTH.unpack_from(frame, ETH_HEADER.size)
    if len(frame) < start + length:
        return None
    return frame[start:start + length]


class L2Channel:
    """Heartbeat frames on one interface, broadcast or to the peer's MAC."""

    def __init__(self, ifname: str, sock: socket.socket, on_frame: FrameHandler) -> None:
        self.ifname = ifname
        self._sock = sock
        self._mac_raw: bytes = sock.getsockname()[4]
        self.mac = format_mac(self._mac_raw)
        self._on_frame = on_frame
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def open(cls, ifname: str, on_frame: FrameHandler) -> L2Channel:
        """Listen on ``ifname``; ``on_frame(payload, source_mac)`` for each peer frame."""
        sock = open_packet_socket(ifname, ETHERTYPE_LOCAL_EXPERIMENTAL, L2_FILTER)
        try:
            return cls(ifname, sock, on_frame)
        except BaseException:
            sock.close()
            raise

    def send(self, payload: bytes, dst_mac: str = "ff:ff:ff:ff:ff:ff") -> OSError | None:
        """Send one frame without waiting; the error if the kernel refused it (link down,
        queue full): the caller keeps the channel's state."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"an L2 heartbeat carries at most {MAX_PAYLOAD} bytes, "
                             f"not {len(payload)}")
        frame = pack_frame(parse_mac(dst_mac), self._mac_raw, payload)
        try:
            self._sock.send(frame)
        except OSError as exc:
            return exc
        return None

    def only_from(self, source_mac: str | None) -> None:
        """Let the kernel keep frames from ``source_mac`` only (None: from any host)."""
        attach_filter(self._sock, l2_filter(source_mac))

    def drain(self) -> None:
        """Read the frames waiting now without waiting for the loop to say so."""
        self._readable()

    def _readable(self) -> None:
        for frame in waiting_frames(self._sock, f"L2 socket on {self.ifname}"):
            source = frame[6:12]
            if source == self._mac_raw:
                continue  # from the wire with our MAC: a loop (or a cloned MAC), not the peer
            payload = unpack_payload(frame)
            if payload is None:
                log.debug("short L2 frame on %s from %s", self.ifname, format_mac(source))
                continue
            self._on_frame(payload, format_mac(source))

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
