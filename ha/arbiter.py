"""The arbiter: a third machine that grants one node of the pair at a time a short lease.

Without it, a cut between just the two nodes (both still reaching the gateway witness)
makes two masters until the cut heals. With ``ha.arbiter`` configured, a node that cannot
hear its peer takes over only while it holds the lease, and a master that hears neither
the peer nor the arbiter lets go before its lease could pass (``ha.machine``).

The protocol rides on the heartbeat framing (``ha.protocol.seal``, HMAC with the pair
key): every heartbeat period each node sends a request, ``want`` true for the master
(renew) and for a node whose peer has been silent (acquire), false otherwise (a query: it
proves the arbiter is reachable and says who holds the lease). The arbiter grants when
nobody holds the lease, or the requester does, or the holder's lease has ended; so the
current master, which renews all the time, keeps it. Its answer echoes the request's boot
id and sequence number, so an answer cannot be replayed to the node; requests of one node
are taken only in increasing order, and never from an earlier start of its agent.

A restarted arbiter knows nothing of the leases it granted before: it answers queries but
grants nothing for ``MAX_LEASE_MS`` (the longest lease it grants), so no lease it granted
before can still run when it grants the next one.

``ArbiterClient`` is the node's side (in the agent), ``Arbiter`` and ``main`` the server
(``voxnode-arbiter --listen ADDR:PORT --key-file FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any, Protocol, cast

from ha.net import READ_BUDGET, net_error
from ha.protocol import MAGIC, BadMessage, open_sealed, parse_key, seal

log = logging.getLogger("voxnode.arbiter")

MAX_LEASE_MS = 5000
REQUESTS_REMEMBERED = 16
OLD_BOOTS_KEPT = 16
MAX_NODES = 16  # nodes the arbiter remembers (a pair needs 2; more is a misconfiguration)

IP = IPv4Address | IPv6Address


class _Local(Protocol):
    @property
    def role(self) -> Any: ...

    @property
    def epoch(self) -> int: ...


class _Keys(Protocol):
    def signing(self) -> list[bytes]: ...

    def verifying(self) -> list[bytes]: ...

    def confirm(self, party: str = "peer") -> bool: ...


# --- the node's side -----------------------------------------------------------------------


class ArbiterClient:
    """Asks the arbiter for the lease every heartbeat; remembers what it answered."""

    def __init__(self, sock: socket.socket, address: IP, port: int, *, node_id: str,
                 boot_id: str, keys: _Keys, clock: Callable[[], float], lease: float,
                 on_answer: Callable[[], None]) -> None:
        self._sock = sock
        self.address, self.port = address, port
        self.node_id, self.boot_id = node_id, boot_id
        self._keys = keys
        self._clock = clock
        self._lease_ms = round(lease * 1000)
        self._on_answer = on_answer
        self._seq = 0
        self._sent: deque[tuple[int, float]] = deque(maxlen=REQUESTS_REMEMBERED)
        self.answered_at: float | None = None
        self.lease_until = float("-inf")  # local monotonic end of our lease
        self.holder: str | None = None  # who holds the lease, as of the last answer
        self.holder_left_ms: int | None = None
        self.send_error: str | None = None
        self.refused = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def open(cls, local_ip: IP, address: IP, port: int, **kwargs: Any) -> ArbiterClient:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if local_ip.version == address.version:
                sock.bind((str(local_ip), 0))
        except OSError as exc:
            sock.close()
            raise net_error(f"open a socket for the arbiter on {local_ip}", exc) from exc
        return cls(sock, address, port, **kwargs)

    def request(self, want: bool, local: _Local, *, give_up: bool = False) -> None:
        """Ask for (``want``) or about the lease; ``give_up``: hand it back (this node just
        handed the node IP over: the peer, now master, gets the lease at its next ask)."""
        self._seq += 1
        now = self._clock()
        self._sent.append((self._seq, now))
        body = {"kind": "lease-request", "node_id": self.node_id, "boot_id": self.boot_id,
                "seq": self._seq, "role": str(local.role), "epoch": local.epoch,
                "want": want and not give_up, "lease_ms": self._lease_ms,
                "give_up": give_up}
        if give_up:
            self.lease_until = float("-inf")
        try:
            self._sock.sendto(seal(body, self._keys.signing()), (str(self.address), self.port))
        except OSError as exc:
            self.send_error = os.strerror(exc.errno or 0)
        else:
            self.send_error = None

    def answer_age(self, now: float) -> float:
        return float("inf") if self.answered_at is None else now - self.answered_at

    def _readable(self) -> None:
        for _ in range(READ_BUDGET):
            try:
                data, source = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                self._take(data, source[0])
            except BadMessage as exc:
                self.refused += 1
                log.debug("arbiter answer from %s refused: %s", source[0], exc)

    def _take(self, data: bytes, source: str) -> None:
        if source != str(self.address):
            raise BadMessage(f"from {source}, not the arbiter")
        body, key_index = open_sealed(data, self._keys.verifying())
        if (body.get("kind") != "lease-answer" or body.get("to") != self.node_id
                or body.get("boot_id") != self.boot_id):
            raise BadMessage("not an answer to this node")
        seq = body.get("seq")
        sent_at = next((t for s, t in self._sent if s == seq), None)
        if sent_at is None:
            raise BadMessage("an answer to no recent request (replay?)")
        granted, left = body.get("granted"), body.get("ms_left")
        holder = body.get("holder")
        if not isinstance(granted, bool) or not isinstance(left, int) or left < 0 or not (
                holder is None or isinstance(holder, str)):
            raise BadMessage("malformed answer")
        if key_index == 0:
            self._keys.confirm("arbiter")  # it has the current key (a rekey can close)
        now = self._clock()
        changed = (self.answer_age(now) > 3 * self._lease_ms / 1000 or holder != self.holder
                   or granted != (self.lease_until > now))
        self.answered_at = now
        self.holder, self.holder_left_ms = holder, left
        # counted from our send time: the arbiter counted it from its later receipt, so
        # our view of the lease ends first (ha.machine)
        self.lease_until = sent_at + min(left, MAX_LEASE_MS) / 1000 if granted else float("-inf")
        if changed:
            self._on_answer()

    def status(self, now: float) -> dict[str, Any]:
        age = self.answer_age(now)
        return {
            "address": f"{self.address}:{self.port}",
            "last_answer_ms": None if age == float("inf") else round(age * 1000),
            "lease_holder": ("this node" if self.lease_until > now
                             else "peer" if self.holder not in (None, self.node_id)
                             else "nobody"),
            "lease_left_ms": (round((self.lease_until - now) * 1000) if self.lease_until > now
                              else self.holder_left_ms if self.holder else None),
            "send_error": self.send_error,
        }

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()


# --- the arbiter itself ----------------------------------------------------------------------


@dataclass
class _Node:
    boot: str
    seq: int
    role: str
    seen: float
    old_boots: deque[str]


class Arbiter:
    """The lease: who holds it and until when (arbiter monotonic time)."""

    def __init__(self, keys: Sequence[bytes], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.keys = list(keys)
        self.clock = clock
        self.holder: str | None = None
        self.until = float("-inf")
        # a restarted arbiter does not know who held the lease: it grants none until every
        # lease the previous process could have granted has ended (queries are answered)
        self.quiet_until = clock() + MAX_LEASE_MS / 1000
        self.nodes: dict[str, _Node] = {}
        self.refused = 0

    def handle(self, data: bytes) -> bytes | None:
        """The signed answer to one request, or None for anything that is not a fresh,
        authentic request (counted, never answered)."""
        try:
            body, _ = open_sealed(data, self.keys)
            node_id, boot, seq = body["node_id"], body["boot_id"], body["seq"]
            want, lease_ms = body["want"], body["lease_ms"]
            if body.get("kind") != "lease-request" or not all(
                    isinstance(v, str) for v in (node_id, boot)) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in (seq, lease_ms)
                    ) or not isinstance(want, bool):
                raise BadMessage("not a lease request")
            self._fresh(node_id, boot, seq, str(body.get("role", "")))
        except (BadMessage, KeyError, TypeError) as exc:
            self.refused += 1
            log.debug("request refused: %s", exc)
            return None
        now = self.clock()
        if self.holder is not None and now >= self.until:
            log.info("lease of %s ended", self.holder)
            self.holder = None
        if body.get("give_up") is True and self.holder == node_id:
            log.info("lease handed back by %s", node_id)
            self.holder, self.until = None, float("-inf")
        granted = False
        if want and self.holder in (None, node_id) and now >= self.quiet_until:
            if self.holder is None:
                log.info("lease granted to %s", node_id)
            self.holder = node_id
            self.until = now + max(0, min(lease_ms, MAX_LEASE_MS)) / 1000
            granted = True
        elif self.holder == node_id:
            granted = True  # a query from the holder: what is left of its lease
        left = max(0, round((self.until - now) * 1000)) if self.holder else 0
        answer = {"kind": "lease-answer", "to": node_id, "boot_id": boot, "seq": seq,
                  "granted": granted, "holder": self.holder, "ms_left": left}
        return seal(answer, self.keys)

    def _fresh(self, node_id: str, boot: str, seq: int, role: str) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            if len(self.nodes) >= MAX_NODES:
                oldest = min(self.nodes, key=lambda n: self.nodes[n].seen)
                del self.nodes[oldest]
            self.nodes[node_id] = _Node(boot, seq, role, self.clock(),
                                        deque(maxlen=OLD_BOOTS_KEPT))
            return
        if boot in node.old_boots:
            raise BadMessage("from an earlier start of the node's agent (replay)")
        if boot == node.boot and seq <= node.seq:
            raise BadMessage("sequence number not newer than the last one (replay)")
        if boot != node.boot:
            node.old_boots.append(node.boot)
        node.boot, node.seq, node.role, node.seen = boot, seq, role, self.clock()


class _ArbiterProtocol(asyncio.DatagramProtocol):
    def __init__(self, arbiter: Arbiter) -> None:
        self.arbiter = arbiter
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if data[:4] != MAGIC:
            self.arbiter.refused += 1
            return
        answer = self.arbiter.handle(data)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


def read_keys(path: Path) -> list[bytes]:
    """The pair key(s) of a key file: one per line, as ``ha pair-key generate`` prints them
    (a second line: the previous key, during a rekey)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not 1 <= len(lines) <= 2:
        raise ValueError("expected one pair key (or two during a rekey), one per line")
    return [parse_key(line) for line in lines]


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("expected ADDRESS:PORT, e.g. 10.0.0.5:7412")
    host = host.strip("[]")
    ip_address(host)  # raises ValueError for a name
    return host, int(port)


async def reload_keys(arbiter: Arbiter, path: Path) -> bool:
    """Read the key file again (SIGHUP, ``systemctl reload``): the new key(s) answer from
    the next request on. A file that cannot be read or holds no valid key changes nothing:
    the error is logged and the keys in use stay."""
    try:
        keys = await asyncio.to_thread(read_keys, path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.error("%s: %s (the key in use is kept)", path, text)
        return False
    if keys != arbiter.keys:
        arbiter.keys = keys
        log.info("%s: reloaded (%d key%s)", path, len(keys), "s" if len(keys) > 1 else "")
    return True


async def serve(host: str, port: int, keys: list[bytes], key_file: Path | None = None) -> None:
    loop = asyncio.get_running_loop()
    arbiter = Arbiter(keys)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _ArbiterProtocol(arbiter), local_addr=(host, port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()
    if key_file is not None:
        def reload() -> None:
            task = loop.create_task(reload_keys(arbiter, key_file))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
    log.info("arbiter listening on %s:%d", host, port)
    try:
        await stop.wait()
    finally:
        transport.close()


EXIT_USAGE, EXIT_INVALID, EXIT_UNAVAILABLE = 2, 3, 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="voxnode-arbiter",
        description="Grant one node of a voxnode pair at a time the lease a takeover needs "
        "when the two nodes cannot hear each other. Run it on a third machine that both "
        "nodes reach (a small VM, the gateway host, a cloud instance) and set "
        "ha.arbiter: {address: ADDR, port: PORT} on both nodes.",
        epilog="SIGHUP reads the key file again (after a rekey: put the new key in it, then "
        "`systemctl reload voxnode-arbiter`); a file without a valid key changes nothing. "
        "Exit status: 0 stopped by a signal, 2 usage, 3 bad key file or address, "
        "5 the address cannot be listened on.")
    parser.add_argument("--listen", required=True, metavar="ADDR:PORT",
                        help="address and UDP port to answer on, e.g. 10.0.0.5:7412")
    parser.add_argument("--key-file", required=True, type=Path, metavar="FILE",
                        help="the pair key as `voxnode ha pair-key generate` prints it "
                        "(a second line: the previous key, while the pair is rekeyed)")
    parser.add_argument("--verbose", action="store_true", help="log every refused request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"voxnode-arbiter: --listen: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        keys = read_keys(args.key_file)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"voxnode-arbiter: {args.key_file}: {text}", file=sys.stderr)
        return EXIT_INVALID
    try:
        asyncio.run(serve(host, port, keys, args.key_file))
    except OSError as exc:
        print(f"voxnode-arbiter: cannot listen on {host}:{port}: "
              f"{os.strerror(exc.errno or 0)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
