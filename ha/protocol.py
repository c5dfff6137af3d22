"""The pair's heartbeat message: what a node tells its peer, authenticated with the pair key.

Wire format (one UDP datagram or one Ethernet frame payload)::

    b"VXHA" | version (1 byte) | body length (2 bytes, big endian) | JSON body | HMAC (16 bytes)

The HMAC is HMAC-SHA256 over everything before it, truncated to 16 bytes. A message is
accepted only with a valid HMAC, a known version, a sender boot id and sequence number
newer than the last one seen (replay), and a send time within ``MAX_AGE_S`` of the local
clock (the pair's clocks must be in sync anyway; requirements §5).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAGIC = b"VXHA"
VERSION = 1
MAC_LEN = 16
MAX_AGE_S = 120.0
_HEADER = struct.Struct("!4sBH")
KEY_BYTES = 32


class Role(StrEnum):
    INIT = "init"
    MASTER = "master"
    SLAVE = "slave"
    OFF = "off"


class Kind(StrEnum):
    HEARTBEAT = "heartbeat"
    RELEASE = "release"  # the master has let the node IP go: take it now (switchover)


class BadMessage(ValueError):
    """A datagram that is not a valid, authentic, fresh heartbeat (reason in the text)."""


class BadSignature(BadMessage):
    """Well formed, but signed with another key: a peer that is alive but misconfigured."""


@dataclass(frozen=True)
class Message:
    kind: Kind
    node_id: str  # the sender's management address
    boot_id: str  # random per agent start: orders sequence numbers across restarts
    seq: int
    role: Role
    epoch: int
    holds_vip: bool
    witness_ok: bool
    sent_at: float  # the sender's wall clock (seconds since the epoch)
    health: tuple[str, ...] = field(default=())

    def to_body(self) -> dict[str, Any]:
        # spelled out rather than dataclasses.asdict: this runs for every heartbeat, and
        # asdict deep-copies field by field
        return {
            "kind": self.kind.value, "node_id": self.node_id, "boot_id": self.boot_id,
            "seq": self.seq, "role": self.role.value, "epoch": self.epoch,
            "holds_vip": self.holds_vip, "witness_ok": self.witness_ok,
            "sent_at": self.sent_at, "health": list(self.health),
        }


def new_boot_id() -> str:
    return secrets.token_hex(8)


def parse_key(text: str) -> bytes:
    """A pair key as shown to operators: 64 hex digits."""
    cleaned = text.strip().lower()
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError("a pair key is 64 hexadecimal digits") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"a pair key is 64 hexadecimal digits (got {len(cleaned)})")
    return key


def encode(message: Message, key: bytes) -> bytes:
    body = json.dumps(message.to_body(), separators=(",", ":")).encode()
    head = _HEADER.pack(MAGIC, VERSION, len(body)) + body
    return head + hmac.new(key, head, hashlib.sha256).digest()[:MAC_LEN]


def decode(data: bytes, key: bytes) -> Message:
    """Authenticate and parse; freshness against replays is ``ReplayGuard``'s job."""
    if len(data) < _HEADER.size + MAC_LEN:
        raise BadMessage("too short")
    magic, version, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadMessage("not a voxnode heartbeat")
    if version != VERSION:
        raise BadMessage(f"protocol version {version} (this node speaks {VERSION})")
    end = _HEADER.size + length
    if len(data) < end + MAC_LEN:
        raise BadMessage("truncated")
    expected = hmac.new(key, data[:end], hashlib.sha256).digest()[:MAC_LEN]
    if not hmac.compare_digest(expected, data[end : end + MAC_LEN]):
        raise BadSignature("bad signature (the nodes have different pair keys?)")
    try:
        body = json.loads(data[_HEADER.size : end])
        return Message(
            kind=Kind(body["kind"]),
            node_id=str(body["node_id"]),
            boot_id=str(body["boot_id"]),
            seq=int(body["seq"]),
            role=Role(body["role"]),
            epoch=int(body["epoch"]),
            holds_vip=bool(body["holds_vip"]),
            witness_ok=bool(body["witness_ok"]),
            sent_at=float(body["sent_at"]),
            health=tuple(str(h) for h in body.get("health", ())),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadMessage(f"malformed body: {exc}") from None


class ReplayGuard:
    """Accepts each sender's messages only in increasing (boot, seq) order and fresh."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, int]] = {}
        self._old_boots: dict[str, set[str]] = {}

    def check(self, message: Message, now_wall: float) -> bool:
        """True for a new message; False for a copy of the newest one (it arrived on the
        other channel first: still proof the channel works); raises for anything older."""
        if abs(now_wall - message.sent_at) > MAX_AGE_S:
            raise BadMessage(
                f"sent {now_wall - message.sent_at:+.0f} s from our clock (clocks out of sync?)"
            )
        last = self._last.get(message.node_id)
        old = self._old_boots.setdefault(message.node_id, set())
        if message.boot_id in old:
            raise BadMessage("from an earlier start of the peer's agent (replay)")
        if last is not None:
            boot, seq = last
            if boot == message.boot_id and message.seq == seq:
                return False
            if boot == message.boot_id and message.seq < seq:
                raise BadMessage("sequence number older than the last one (replay)")
            if boot != message.boot_id:
                old.add(boot)
        self._last[message.node_id] = (message.boot_id, message.seq)
        return True
