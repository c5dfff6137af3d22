"""The database half of replication, pure parts: GTID positions, the server's drop-in, the
server id and the account secret (the server itself: tests/netns/test_replication_db.py)."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ha.replication.gtid import (
    BadPosition,
    Gtid,
    ahead_of,
    describe,
    format_position,
    parse_position,
)
from ha.replication.mariadb import (
    TlsFiles,
    render_server_config,
    replication_secret,
    server_id_for,
)
from tests.unit.conftest import Golden

# --- GTID positions -------------------------------------------------------------------------


def test_a_position_reads_and_writes_back() -> None:
    position = parse_position("0-11-42,1-12-7")
    assert position == {0: Gtid(0, 11, 42), 1: Gtid(1, 12, 7)}
    assert format_position(position) == "0-11-42,1-12-7"
    assert parse_position("") == {}
    assert parse_position(" 1-12-7 , 0-11-42 ") == position  # the server's own spacing


@pytest.mark.parametrize(("text", "problem"), [
    ("0-11", "'0-11' is not a GTID (domain-server-seqno)"),
    ("0-11-x", "'0-11-x' is not a GTID (domain-server-seqno)"),
    ("-1-11-4", "'-1-11-4' is not a GTID (domain-server-seqno)"),
    ("0-11-4,0-12-5", "domain 0 appears twice"),
    ("0-4294967296-1", "'0-4294967296-1' is out of range"),
    ("0-1-" + "9" * 21, "is not a GTID"),
    ("0-1-1," * 1000, "a GTID position of 6000 characters"),
    ("\uff10-1-1", "is not a GTID"),  # a full-width digit is not a digit here
])
def test_what_is_not_a_position_is_refused(text: str, problem: str) -> None:
    with pytest.raises(BadPosition) as info:
        parse_position(text)
    assert problem in str(info.value)


def test_what_one_server_has_past_another() -> None:
    master = parse_position("0-11-50,1-12-7")
    replica = parse_position("0-11-42")
    missing = ahead_of(master, replica)
    assert [str(m) for m in missing] == ["0-11-43..50", "1-12-1..7"]
    assert describe(missing) == "0-11-43..50, 1-12-1..7 (15 transactions)"
    assert ahead_of(replica, master) == []
    assert ahead_of(master, master) == []
    assert describe(ahead_of(parse_position("0-11-43"), replica)) == "0-11-43 (1 transaction)"


seqnos = st.integers(min_value=0, max_value=2**40)
positions = st.dictionaries(
    st.integers(min_value=0, max_value=5),
    st.tuples(st.integers(min_value=1, max_value=2**32 - 1), seqnos), max_size=4,
).map(lambda d: {k: Gtid(k, s, n) for k, (s, n) in d.items()})


@given(positions)
def test_any_position_round_trips(position: dict[int, Gtid]) -> None:
    assert parse_position(format_position(position)) == position


@given(positions, positions)
def test_ahead_counts_exactly_the_transactions_past_the_other(
        a: dict[int, Gtid], b: dict[int, Gtid]) -> None:
    missing = ahead_of(a, b)
    for m in missing:
        assert m.count == a[m.domain].seqno - (b[m.domain].seqno if m.domain in b else 0)
        assert m.count > 0
    assert {m.domain for m in missing} == {
        d for d in a if a[d].seqno > (b[d].seqno if d in b else 0)}


@given(st.text(max_size=200))
def test_any_text_is_a_position_or_refused(text: str) -> None:
    with contextlib.suppress(BadPosition):
        parse_position(text)


# --- the server's settings ------------------------------------------------------------------


def test_the_drop_in(golden: Golden) -> None:
    golden.check("replication/voxnode-replication.cnf", render_server_config(
        server_id_for(ipaddress.ip_address("10.0.0.11")), "10.0.0.11",
        TlsFiles("/etc/voxnode/tls/db.crt", "/etc/voxnode/tls/db.key",
                 "/etc/voxnode/tls/pair-ca.crt")))


def test_the_drop_in_says_what_issue_demands() -> None:
    text = render_server_config(7, "10.0.0.11", None)
    settings = dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)
    assert settings["binlog_format"] == "ROW"
    assert settings["gtid_strict_mode"] == "ON"
    assert settings["rpl_semi_sync_master_wait_point"] == "AFTER_SYNC"
    assert settings["sync_relay_log"] == "1"
    assert settings["read_only"] == "ON" and settings["skip_slave_start"] == "ON"
    assert settings["init_rpl_role"] == "SLAVE"
    assert "ssl_cert" not in settings


def test_server_ids_differ_within_a_subnet_and_are_never_zero() -> None:
    ids = {server_id_for(ipaddress.ip_address(f"10.0.0.{i}")) for i in range(1, 255)}
    assert len(ids) == 254
    assert server_id_for(ipaddress.ip_address("0.0.0.0")) == 1
    assert server_id_for(ipaddress.ip_address("fd00::11")) == 0x11


def test_the_account_secret_follows_the_pair_key() -> None:
    one, two = bytes(32), bytes(range(32))
    assert replication_secret(one) == replication_secret(one)
    assert replication_secret(one) != replication_secret(two)
    secret = replication_secret(two)
    assert len(secret) == 43 and secret.replace("-", "").replace("_", "").isalnum()
    assert one.hex() not in secret and two.hex() not in secret


# --- MongoDB (the chat): rendered only (no server can run here) ----------------------------


def test_the_chat_replica_set(golden: Golden) -> None:
    from ha.replication import mongodb

    chat = mongodb.ChatSet.of(ipaddress.ip_address("10.0.0.12"),
                              ipaddress.ip_address("10.0.0.11"), ipaddress.ip_address("10.0.0.1"))
    assert [str(a) for a in chat.nodes] == ["10.0.0.11", "10.0.0.12"]  # the same on both
    golden.check("replication/mongodb-initiate.js", mongodb.render_initiate(chat))
    golden.check("replication/mongod-replication.conf",
                 mongodb.render_mongod_conf(ipaddress.ip_address("10.0.0.11")))
    without = mongodb.render_initiate(mongodb.ChatSet.of(
        ipaddress.ip_address("10.0.0.11"), ipaddress.ip_address("10.0.0.12"), None))
    assert "arbiterOnly" not in without
    key = mongodb.keyfile_for(bytes(32))
    assert 6 <= len(key.strip()) <= 1024 and key == mongodb.keyfile_for(bytes(32))
    assert key != mongodb.keyfile_for(bytes(range(32)))
