"""The arbiter's lease: one holder at a time, the master preferred, replays refused; and the
node's client against a real arbiter on the loopback."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from ha.arbiter import Arbiter, ArbiterClient, _ArbiterProtocol, main, parse_listen, read_keys
from ha.keys import Keyring
from ha.protocol import open_sealed, seal

KEY = bytes(range(32))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def request(node: str, seq: int, *, want: bool = True, boot: str = "b", lease_ms: int = 450,
            key: bytes = KEY) -> bytes:
    return seal({"kind": "lease-request", "node_id": node, "boot_id": boot, "seq": seq,
                 "role": "master", "epoch": 1, "want": want, "lease_ms": lease_ms}, [key])


def answer(arbiter: Arbiter, data: bytes) -> dict[str, object] | None:
    raw = arbiter.handle(data)
    return None if raw is None else open_sealed(raw, [KEY])[0]


def test_one_holder_at_a_time_until_its_lease_ends() -> None:
    clock = Clock()
    arbiter = Arbiter([KEY], clock)
    clock.t += 5  # past the quiet period of a new arbiter
    first = answer(arbiter, request("10.0.0.11", 1))
    assert first is not None and first["granted"] is True and first["ms_left"] == 450
    refused = answer(arbiter, request("10.0.0.12", 1))
    assert refused is not None and refused["granted"] is False
    assert refused["holder"] == "10.0.0.11"
    clock.t += 0.3  # the holder renews: it keeps it
    assert answer(arbiter, request("10.0.0.11", 2))["granted"] is True  # type: ignore[index]
    clock.t += 0.4
    assert answer(arbiter, request("10.0.0.12", 2))["granted"] is False  # type: ignore[index]
    clock.t += 0.1  # 0.5 s after the last renewal: it has ended
    taken = answer(arbiter, request("10.0.0.12", 3))
    assert taken is not None and taken["granted"] is True and taken["holder"] == "10.0.0.12"


def test_a_query_proves_reachability_and_takes_nothing() -> None:
    arbiter = Arbiter([KEY], Clock())
    seen = answer(arbiter, request("10.0.0.12", 1, want=False))
    assert seen is not None and seen["granted"] is False and seen["holder"] is None
    assert arbiter.holder is None


@pytest.mark.parametrize("bad", [
    request("10.0.0.11", 1, key=bytes(32)),  # another key
    b"VXHA" + bytes(40), b"", b"junk",
    seal({"kind": "lease-request"}, [KEY]),  # fields missing
    seal({"kind": "lease-request", "node_id": 7, "boot_id": "b", "seq": 1, "want": True,
          "lease_ms": 450}, [KEY]),
    seal({"kind": "lease-request", "node_id": "n", "boot_id": "b", "seq": True, "want": True,
          "lease_ms": 450}, [KEY]),
])
def test_bad_requests_get_no_answer(bad: bytes) -> None:
    arbiter = Arbiter([KEY], Clock())
    assert arbiter.handle(bad) is None
    assert arbiter.refused == 1 and arbiter.holder is None


def test_replayed_requests_are_refused() -> None:
    arbiter = Arbiter([KEY], Clock())
    assert arbiter.handle(request("n", 5)) is not None
    assert arbiter.handle(request("n", 5)) is None  # the same one again
    assert arbiter.handle(request("n", 4)) is None  # an older one
    assert arbiter.handle(request("n", 1, boot="c")) is not None  # the node restarted
    assert arbiter.handle(request("n", 9, boot="b")) is None  # its earlier start: a replay


def test_a_new_arbiter_grants_nothing_until_any_earlier_lease_has_ended() -> None:
    clock = Clock()
    arbiter = Arbiter([KEY], clock)
    early = answer(arbiter, request("10.0.0.11", 1))
    assert early is not None and early["granted"] is False and early["holder"] is None
    clock.t += 5
    assert answer(arbiter, request("10.0.0.11", 2))["granted"] is True  # type: ignore[index]


def test_a_lease_is_capped() -> None:
    clock = Clock()
    arbiter = Arbiter([KEY], clock)
    clock.t += 5
    got = answer(arbiter, request("n", 1, lease_ms=10**9))
    assert got is not None and got["ms_left"] == 5000


def test_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError):
        parse_listen("10.0.0.5")
    with pytest.raises(ValueError):
        parse_listen("arbiter.example:7412")
    assert parse_listen("[::1]:7412") == ("::1", 7412)
    assert main(["--listen", "10.0.0.5:99999", "--key-file", "x"]) == 3
    assert main(["--listen", "127.0.0.1:7412", "--key-file", str(tmp_path / "none")]) == 3
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    assert main(["--listen", "127.0.0.1:7412", "--key-file", str(bad)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "64 hexadecimal digits" in err
    good = tmp_path / "good.key"
    good.write_text(KEY.hex() + "\n" + bytes(32).hex() + "\n")
    assert read_keys(good) == [KEY, bytes(32)]


async def test_the_client_holds_the_lease_of_a_real_arbiter() -> None:
    loop = asyncio.get_running_loop()
    arbiter = Arbiter([KEY])
    arbiter.quiet_until = float("-inf")  # as if it had run for a while
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _ArbiterProtocol(arbiter), local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    answers = asyncio.Event()
    keys = Keyring(KEY, wall=lambda: 0.0)
    clients = [await ArbiterClient.open(
        IPv4Address("127.0.0.1"), IPv4Address("127.0.0.1"), port, node_id=node, boot_id="x",
        keys=keys, clock=loop.time, lease=0.45, on_answer=answers.set)
        for node in ("10.0.0.11", "10.0.0.12")]

    class Me:
        role, epoch = "master", 1

    try:
        for _ in range(3):
            clients[0].request(True, Me())
            clients[1].request(True, Me())
            await asyncio.sleep(0.02)
        now = loop.time()
        assert 0.3 < clients[0].lease_until - now <= 0.45
        assert clients[0].status(now)["lease_holder"] == "this node"
        assert clients[1].lease_until < now
        assert clients[1].status(now)["lease_holder"] == "peer"
        assert clients[1].answer_age(now) < 0.1
    finally:
        for client in clients:
            client.close()
        transport.close()


def test_a_lease_handed_back_goes_to_the_next_asker_at_once() -> None:
    clock = Clock()
    arbiter = Arbiter([KEY], clock)
    clock.t += 5
    assert answer(arbiter, request("10.0.0.11", 1))["granted"] is True  # type: ignore[index]
    back = seal({"kind": "lease-request", "node_id": "10.0.0.11", "boot_id": "b", "seq": 2,
                 "role": "slave", "epoch": 1, "want": False, "lease_ms": 450,
                 "give_up": True}, [KEY])
    assert answer(arbiter, back)["holder"] is None  # type: ignore[index]
    assert answer(arbiter, request("10.0.0.12", 1))["granted"] is True  # type: ignore[index]


def _ask(port: int, data: bytes, key: bytes) -> dict[str, object] | None:
    """One request to an arbiter process on the loopback; its answer, if one came."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            raw = sock.recv(2048)
        except TimeoutError:
            return None
    return open_sealed(raw, [key])[0]


def test_sighup_reloads_the_key_file_and_a_bad_one_changes_nothing(tmp_path: Path) -> None:
    """The arbiter process: after a rekey its key file is rewritten and it is told with
    SIGHUP (``systemctl reload``); requests under the new key are answered from then on. A
    key file made unreadable or invalid and then signalled keeps the key in use."""
    new = bytes(range(32, 64))
    keyfile = tmp_path / "arbiter.key"
    keyfile.write_text(KEY.hex() + "\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from ha.arbiter import main; sys.exit(main())",
         "--listen", f"127.0.0.1:{port}", "--key-file", str(keyfile)],
        stderr=subprocess.PIPE, text=True)
    seq = iter(range(1, 1000))

    def asked(key: bytes, deadline_s: float = 5.0) -> dict[str, object] | None:
        end = time.monotonic() + deadline_s
        while True:
            got = _ask(port, request("10.0.0.11", next(seq), want=False, key=key), key)
            if got is not None or time.monotonic() > end:
                return got
    try:
        assert asked(KEY) is not None  # up, answering under the first key
        assert asked(new, 0.5) is None
        keyfile.write_text(new.hex() + "\n" + KEY.hex() + "\n")  # the rekey: new, previous
        proc.send_signal(signal.SIGHUP)
        assert asked(new) is not None
        keyfile.write_text("not a key\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert asked(new) is not None  # the bad file changed nothing
        keyfile.write_text(new.hex() + "\n")  # the rekey confirmed: the old key goes
        proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 5
        while asked(KEY, 0.3) is not None:
            assert time.monotonic() < end, "the previous key is still answered"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert "the key in use is kept" in err and "Traceback" not in err, err
    assert "reloaded (2 keys)" in err and "reloaded (1 key)" in err, err
