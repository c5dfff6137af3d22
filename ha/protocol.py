"""The pair's messages: what a node tells its peer (and the arbiter), authenticated with the
pair key.

Wire format (one UDP datagram or one Ethernet frame payload)::

    b"VXHA" | version (1 byte) | body length (2 bytes, big endian) | JSON body | MAC … MAC

Each MAC is HMAC-SHA256 over everything before the first MAC, truncated to 16 bytes, one
per key the sender holds (at most ``MAX_MACS``): during a rekey a node signs with the new
and the previous key, so a peer that has either accepts the message and neither loses the
other. A receiver accepts a message if any MAC matches any of its keys.

Freshness does not depend on the clocks (two nodes whose clocks differ are a health
problem, not a partition): every message carries the sender's boot id (random per agent
start), a sequence number that only grows within that boot, and ``ack``, the boot id of
the last authentic message it heard from the receiver. The receiver accepts a sender's
boot only once a message of it acknowledges the receiver's *current* boot, then each
message only in increasing order. A message captured before the receiver restarted names
the receiver's old boot and is refused; one of an earlier boot of the sender is refused
outright. ``sent_at`` (the sender's wall clock) is carried only to report a clock
difference.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MAGIC = b"VXHA"
VERSION = 1
MAC_LEN = 16
MAX_MACS = 2
MAX_BODY = 1400  # a heartbeat body is ~350 bytes; anything larger is not ours
MAX_DB_TEXT = 300  # a database position: a few GTIDs (3 such fields fit in MAX_BODY)
_HEADER = struct.Struct("!4sBH")
HEADER_LEN = _HEADER.size
KEY_BYTES = 32
OLD_BOOTS_KEPT = 16
MAX_COUNTER = 2**63  # sequence numbers and epochs are counters, not arbitrary integers
LATE_WINDOW = 64  # a message this many behind the newest is a late copy, not a replay


class Role(StrEnum):
    INIT = "init"
    MASTER = "master"
    SLAVE = "slave"
    OFF = "off"


class Kind(StrEnum):
    HEARTBEAT = "heartbeat"
    RELEASE = "release"  # the master has let the node IP go: take it now (switchover)


class BadMessage(ValueError):
    """A datagram that is not a valid, authentic, fresh message (reason in the text)."""


class BadSignature(BadMessage):
    """Well formed, but no MAC matches a key of ours: another pair key, or a forgery."""


class NotYetFresh(BadMessage):
    """Authentic, but the sender has not yet acknowledged this node's current start: it
    may be a copy recorded before this node restarted. The next one will be."""


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
    sent_at: float  # the sender's wall clock (seconds since the epoch): for reporting only
    ack: str = ""  # boot id of the last authentic message the sender heard from us
    dead_ms: int = 0  # the sender's dead interval: a receiver with a faster profile waits
    #                   at least this long before it counts the sender as lost
    db: str = ""  # the sender's database position (GTIDs) while master, or frozen at
    db_sync: str = ""  # "semi": its commits wait for the replica; "async"; "frozen"; ""
    db_fork: str = ""  # a master's position when it opened for writes (where it forked)

    def to_body(self) -> dict[str, Any]:
        # spelled out rather than dataclasses.asdict: this runs for every heartbeat, and
        # asdict deep-copies field by field
        return {
            "kind": self.kind.value, "node_id": self.node_id, "boot_id": self.boot_id,
            "seq": self.seq, "role": self.role.value, "epoch": self.epoch,
            "holds_vip": self.holds_vip, "witness_ok": self.witness_ok,
            "sent_at": self.sent_at, "ack": self.ack, "dead_ms": self.dead_ms,
            "db": self.db, "db_sync": self.db_sync, "db_fork": self.db_fork,
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


def _mac(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()[:MAC_LEN]


def _matches(expected: bytes, slots: Sequence[bytes]) -> bool:
    return any(hmac.compare_digest(expected, slot) for slot in slots)


def seal(body: dict[str, Any], keys: Sequence[bytes]) -> bytes:
    """Frame ``body`` and sign it with every key in ``keys`` (1 or 2)."""
    if not 1 <= len(keys) <= MAX_MACS:
        raise ValueError(f"a message is signed with 1 to {MAX_MACS} keys, not {len(keys)}")
    raw = json.dumps(body, separators=(",", ":")).encode()
    head = _HEADER.pack(MAGIC, VERSION, len(raw)) + raw
    return head + b"".join(_mac(key, head) for key in keys)


def open_sealed(data: bytes, keys: Sequence[bytes]) -> tuple[dict[str, Any], int]:
    """Check the framing and the MACs; the JSON body and the index of the key that matched.

    The cheap checks (length, magic, version, size) come before any HMAC, so junk costs
    almost nothing to refuse."""
    if len(data) < HEADER_LEN + MAC_LEN:
        raise BadMessage("too short")
    magic, version, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadMessage("not a voxnode message")
    if version != VERSION:
        raise BadMessage(f"protocol version {version} (this node speaks {VERSION})")
    if length > MAX_BODY:
        raise BadMessage(f"body of {length} bytes (at most {MAX_BODY})")
    end = HEADER_LEN + length
    trailer = len(data) - end
    if trailer < MAC_LEN:
        raise BadMessage("truncated")
    # a sender of the first release sends one MAC and may pad an Ethernet frame after it
    slots = [data[end + i * MAC_LEN: end + (i + 1) * MAC_LEN]
             for i in range(min(MAX_MACS, trailer // MAC_LEN))]
    signed = data[:end]
    index = next((n for n, key in enumerate(keys) if _matches(_mac(key, signed), slots)), None)
    if index is None:
        raise BadSignature("bad signature (the nodes have different pair keys?)")
    try:
        body = json.loads(data[HEADER_LEN:end])
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"malformed body: {exc}") from None
    if not isinstance(body, dict):
        raise BadMessage("malformed body: not an object")
    return body, index


def encode(message: Message, keys: bytes | Sequence[bytes]) -> bytes:
    return seal(message.to_body(), [keys] if isinstance(keys, bytes) else keys)


def decode(data: bytes, keys: bytes | Sequence[bytes]) -> Message:
    """Authenticate and parse; freshness is ``ReplayGuard``'s job."""
    return decode_with_key(data, [keys] if isinstance(keys, bytes) else keys)[0]


def decode_with_key(data: bytes, keys: Sequence[bytes]) -> tuple[Message, int]:
    """``decode``, also saying which of ``keys`` authenticated the message."""
    body, index = open_sealed(data, keys)
    try:
        for name in ("seq", "epoch"):
            value = body[name]
            if not isinstance(value, int) or isinstance(value, bool) or not (
                    0 <= value < MAX_COUNTER):
                raise ValueError(f"{name} is not a counter below 2**63")
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
            ack=str(body.get("ack", "")),
            dead_ms=min(60_000, max(0, int(body.get("dead_ms", 0)))),
            db=_short_text(body.get("db", ""), MAX_DB_TEXT),
            db_sync=_short_text(body.get("db_sync", ""), 8),
            db_fork=_short_text(body.get("db_fork", ""), MAX_DB_TEXT),
            # (the database's fields are the database's business: one that is not what
            # it should be is left out, never the reason a heartbeat is refused)
        ), index
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise BadMessage(f"malformed body: {exc!r}") from None


def _short_text(value: object, limit: int) -> str:
    """A text field, or "" when it is not text or is longer than ``limit``."""
    if not isinstance(value, str) or len(value) > limit:
        return ""
    return value


class ReplayGuard:
    """Accepts each sender's messages only when fresh, without looking at any clock.

    ``own_boot`` is this node's boot id: a sender's boot is taken only from a message that
    acknowledges it, then only in increasing sequence order."""

    def __init__(self, own_boot: str) -> None:
        self.own_boot = own_boot
        self._last: dict[str, tuple[str, int]] = {}
        self._old_boots: dict[str, deque[str]] = {}

    def check(self, message: Message) -> bool:
        """True for a new message; False for a copy of the newest one (it arrived on the
        other channel first: still proof the channel works); raises for anything else."""
        last = self._last.get(message.node_id)
        old = self._old_boots.setdefault(message.node_id, deque(maxlen=OLD_BOOTS_KEPT))
        if message.boot_id in old:
            raise BadMessage("from an earlier start of the peer's agent (replay)")
        if last is not None and last[0] == message.boot_id:
            if message.seq == last[1]:
                return False
            if message.seq < last[1]:
                if last[1] - message.seq <= LATE_WINDOW:
                    return False  # overtaken on the other channel: late, not applied
                raise BadMessage("sequence number older than the last one (replay)")
        else:
            if message.ack != self.own_boot:
                raise NotYetFresh("does not yet acknowledge this node's current start")
            if last is not None:
                old.append(last[0])
        self._last[message.node_id] = (message.boot_id, message.seq)
        return True

    def forget(self, node_id: str) -> None:
        """A peer address that is no longer configured."""
        self._last.pop(node_id, None)
        self._old_boots.pop(node_id, None)
