"""Heartbeat encoding, authentication (one or two keys) and clock-free replay protection."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import time
from dataclasses import fields, replace

import pytest

from ha.keys import Keyring
from ha.protocol import (
    MAX_BODY,
    BadMessage,
    BadSignature,
    Kind,
    Message,
    NotYetFresh,
    ReplayGuard,
    Role,
    decode,
    decode_with_key,
    encode,
    new_boot_id,
    parse_key,
    seal,
)

KEY = bytes(range(32))
OTHER = bytes(32)
NOW = time.time()
ME = "our-boot"


def msg(seq: int = 1, boot: str = "b1", sent_at: float = NOW, ack: str = ME) -> Message:
    return Message(Kind.HEARTBEAT, "10.0.0.11", boot, seq, Role.MASTER, 7, True, True, sent_at,
                   ack)


def test_round_trip() -> None:
    assert decode(encode(msg(), KEY), KEY) == msg()


def test_the_body_carries_every_field_in_json_types() -> None:
    body = msg().to_body()
    assert list(body) == [f.name for f in fields(Message)]
    assert body["kind"] == "heartbeat" and type(body["kind"]) is str
    assert body["role"] == "master" and type(body["role"]) is str
    assert body["ack"] == ME


def test_a_different_key_is_refused() -> None:
    with pytest.raises(BadSignature, match="bad signature"):
        decode(encode(msg(), KEY), OTHER)


def test_one_flipped_bit_is_refused() -> None:
    data = bytearray(encode(msg(), KEY))
    data[12] ^= 1
    with pytest.raises(BadMessage):
        decode(bytes(data), KEY)


def test_two_keys_during_a_rekey_either_side_verifies() -> None:
    both = encode(msg(), [KEY, OTHER])
    assert decode_with_key(both, [KEY])[1] == 0
    assert decode_with_key(both, [OTHER])[1] == 0
    assert decode_with_key(both, [OTHER, KEY])[1] == 0
    # a receiver with both keys tells which one matched: index 1 is the previous key
    assert decode_with_key(encode(msg(), OTHER), [KEY, OTHER])[1] == 1
    with pytest.raises(ValueError):
        encode(msg(), [KEY, OTHER, KEY])


GARBAGE = [b"", b"VXHA", b"XXXX" + bytes(40), b"VXHA\x02\x00\x01x" + bytes(16),
           b"VXHA\x01\xff\xff" + bytes(40),  # a body length far over the limit
           b"VXHA\x01\x00\x05hello" + bytes(8)]  # a MAC cut short


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(BadMessage):
        decode(data, KEY)


@pytest.mark.parametrize("body", [
    [], "x", 7, {"kind": "heartbeat"},
    {**msg().to_body(), "seq": "1e400"}, {**msg().to_body(), "seq": [1]},
    {**msg().to_body(), "role": "emperor"}, {**msg().to_body(), "epoch": None},
])
def test_authentic_but_malformed_bodies_are_refused(body: object) -> None:
    raw = json.dumps(body).encode()
    data = struct.pack("!4sBH", b"VXHA", 1, len(raw)) + raw
    data += hmac.new(KEY, data, hashlib.sha256).digest()[:16]
    with pytest.raises(BadMessage, match="malformed"):
        decode(data, KEY)


@pytest.mark.parametrize("body", [
    {**msg().to_body(), "epoch": 10**30}, {**msg().to_body(), "seq": -1},
    {**msg().to_body(), "seq": True},
])
def test_counters_out_of_range_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(BadMessage, match="malformed"):
        decode(seal(body, [KEY]), KEY)


def test_deep_nesting_is_refused_not_raised() -> None:
    raw = b"[" * 1000
    data = struct.pack("!4sBH", b"VXHA", 1, len(raw)) + raw
    data += hmac.new(KEY, data, hashlib.sha256).digest()[:16]
    with pytest.raises(BadMessage, match="malformed"):
        decode(data, KEY)


def test_an_oversized_body_is_refused_before_any_hmac() -> None:
    with pytest.raises(BadMessage, match="at most"):
        decode(seal({"pad": "x" * MAX_BODY}, [KEY]), KEY)


def test_replay_guard_orders_within_a_boot() -> None:
    guard = ReplayGuard(ME)
    assert guard.check(msg(1)) is True
    assert guard.check(msg(1)) is False  # the copy from the other channel
    assert guard.check(msg(2)) is True
    assert guard.check(msg(1)) is False  # overtaken on the other channel: late, not applied
    assert guard.check(msg(200)) is True
    with pytest.raises(BadMessage, match="replay"):
        guard.check(msg(100))  # far behind the newest: a replay
    assert guard.check(msg(1, boot="b2")) is True  # the peer restarted
    with pytest.raises(BadMessage, match="earlier start"):
        guard.check(msg(9, boot="b1"))
    # later messages of a taken boot need no acknowledgement any more
    assert guard.check(msg(2, boot="b2", ack="someone-else")) is True


def test_freshness_does_not_depend_on_the_clocks() -> None:
    guard = ReplayGuard(ME)
    assert guard.check(msg(1, sent_at=NOW - 600)) is True  # a clock 10 minutes behind
    assert guard.check(msg(2, sent_at=NOW + 86400)) is True  # or a day ahead


def test_a_message_recorded_before_this_node_restarted_is_refused() -> None:
    # the peer's messages acknowledged our previous start: after our restart, a recording
    # of them is refused until the peer has heard our new start
    before = msg(5, ack="our-previous-boot")
    guard = ReplayGuard(ME)
    with pytest.raises(NotYetFresh):
        guard.check(before)
    with pytest.raises(NotYetFresh):
        guard.check(replace(before, seq=6))
    assert guard.check(msg(7)) is True  # the real peer, acknowledging us
    assert guard.check(replace(before, seq=6)) is False  # older than the newest: not applied


def test_keys() -> None:
    assert parse_key("ab" * 32) == bytes([0xAB]) * 32
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        parse_key("abc")
    with pytest.raises(ValueError):
        parse_key("zz" * 32)
    assert new_boot_id() != new_boot_id()


def test_a_rekey_waits_for_the_arbiter_too_when_there_is_one() -> None:
    ring = Keyring(KEY, wall=lambda: 0.0, parties=frozenset({"peer", "arbiter"}))
    ring.rekey(OTHER)
    assert ring.confirm("peer") is False  # the arbiter still has only the old key
    assert ring.signing() == [OTHER, KEY] and ring.waiting_for() == ["arbiter"]
    assert ring.confirm("arbiter") is True
    assert ring.signing() == [OTHER] and ring.waiting_for() == []


def test_keyring_window() -> None:
    now = [1000.0]
    changes: list[bytes | None] = []
    ring = Keyring(KEY, wall=lambda: now[0], on_change=lambda k: changes.append(k.previous))
    assert ring.signing() == [KEY] and ring.pending_until() is None
    ring.rekey(OTHER)
    assert ring.signing() == [OTHER, KEY] and ring.pending_until() is not None
    now[0] = 1e12  # no time limit: the window stays open until the peer has the key
    assert ring.signing() == [OTHER, KEY]
    third = bytes([7]) * 32
    ring.rekey(third)  # a second rekey before the peer confirmed: KEY is still the peer's
    assert ring.signing() == [third, KEY]
    assert ring.confirm() is True  # the peer used the new key
    assert ring.signing() == [third] and ring.confirm() is False
    ring.rekey(third)  # the same key again: nothing to do
    assert ring.signing() == [third]
    assert changes == [KEY, KEY, None]


def test_the_database_position_travels_with_the_heartbeat() -> None:
    sent = replace(msg(), db="0-173539339-42,1-12-7", db_sync="semi")
    assert decode(encode(sent, KEY), KEY) == sent
    older = {k: v for k, v in msg().to_body().items() if k not in ("db", "db_sync")}
    got = decode(seal(older, [KEY]), KEY)  # a peer without database replication
    assert (got.db, got.db_sync) == ("", "")


@pytest.mark.parametrize("fields", [
    {"db": 7}, {"db": ["0-1-1"]}, {"db": "0-1-1," * 100}, {"db_sync": "semi" * 3},
    {"db_fork": {"x": 1}},
])
def test_a_bad_database_field_is_left_out_not_the_heartbeat(fields: dict[str, object]) -> None:
    got = decode(seal({**msg().to_body(), **fields}, [KEY]), KEY)
    assert (got.role, got.epoch) == (Role.MASTER, 7)
    for name in fields:
        assert getattr(got, name) == ""
