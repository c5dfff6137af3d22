"""Heartbeat encoding, authentication and replay protection."""

from __future__ import annotations

import time
from dataclasses import fields, replace

import pytest

from ha.protocol import (
    BadMessage,
    Kind,
    Message,
    ReplayGuard,
    Role,
    decode,
    encode,
    new_boot_id,
    parse_key,
)

KEY = bytes(range(32))
NOW = time.time()


def msg(seq: int = 1, boot: str = "b1", sent_at: float = NOW) -> Message:
    return Message(Kind.HEARTBEAT, "10.0.0.11", boot, seq, Role.MASTER, 7, True, True, sent_at,
                   ("ok",))


def test_round_trip() -> None:
    assert decode(encode(msg(), KEY), KEY) == msg()


def test_the_body_carries_every_field_in_json_types() -> None:
    body = msg().to_body()
    assert list(body) == [f.name for f in fields(Message)]
    assert body["kind"] == "heartbeat" and type(body["kind"]) is str
    assert body["role"] == "master" and type(body["role"]) is str
    assert body["health"] == ["ok"]


def test_a_different_key_is_refused() -> None:
    with pytest.raises(BadMessage, match="bad signature"):
        decode(encode(msg(), KEY), bytes(32))


def test_one_flipped_bit_is_refused() -> None:
    data = bytearray(encode(msg(), KEY))
    data[12] ^= 1
    with pytest.raises(BadMessage):
        decode(bytes(data), KEY)


GARBAGE = [b"", b"VXHA", b"XXXX" + bytes(40), b"VXHA\x02\x00\x01x" + bytes(16)]


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(BadMessage):
        decode(data, KEY)


def test_replay_guard() -> None:
    guard = ReplayGuard()
    assert guard.check(msg(1), NOW) is True
    assert guard.check(msg(1), NOW) is False  # the copy from the other channel
    assert guard.check(msg(2), NOW) is True
    with pytest.raises(BadMessage, match="replay"):
        guard.check(msg(1), NOW)
    assert guard.check(msg(1, boot="b2"), NOW) is True  # the peer restarted
    with pytest.raises(BadMessage, match="earlier start"):
        guard.check(msg(9, boot="b1"), NOW)
    with pytest.raises(BadMessage, match="clocks out of sync"):
        guard.check(msg(3, boot="b2", sent_at=NOW - 600), NOW)


def test_keys() -> None:
    assert parse_key("ab" * 32) == bytes([0xAB]) * 32
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        parse_key("abc")
    with pytest.raises(ValueError):
        parse_key("zz" * 32)
    assert new_boot_id() != new_boot_id()
    assert replace(msg(), seq=5).seq == 5
