"""MariaDB GTID positions (``0-11-42,1-12-7``) and how two of them compare. Pure.

A position holds, per replication domain, the last transaction (``domain-server-seqno``).
With ``gtid_strict_mode`` the sequence numbers of a domain only grow, so a server whose
position in some domain is past another's holds transactions the other lacks: what a
returning old master must not replicate on top of (it diverged), and what a crash may
have lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_GTID = re.compile(r"([0-9]{1,10})-([0-9]{1,10})-([0-9]{1,20})")
MAX_POSITION_TEXT = 4096  # a few domains; anything longer is not a position we produced


class BadPosition(ValueError):
    """Text that is not a GTID position."""


@dataclass(frozen=True, order=True)
class Gtid:
    domain: int
    server: int
    seqno: int

    def __str__(self) -> str:
        return f"{self.domain}-{self.server}-{self.seqno}"


Position = dict[int, Gtid]  # by domain


def parse_position(text: str) -> Position:
    """``"0-11-42,1-12-7"`` → by domain; ``""`` is the empty position. BadPosition for
    anything else (two GTIDs of one domain included)."""
    if len(text) > MAX_POSITION_TEXT:
        raise BadPosition(f"a GTID position of {len(text)} characters")
    position: Position = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        found = _GTID.fullmatch(part)
        if found is None:
            raise BadPosition(f"'{part[:40]}' is not a GTID (domain-server-seqno)")
        gtid = Gtid(*(int(g) for g in found.groups()))
        if gtid.domain in position:
            raise BadPosition(f"domain {gtid.domain} appears twice")
        if gtid.domain >= 2**32 or gtid.server >= 2**32 or gtid.seqno >= 2**64:
            raise BadPosition(f"'{part}' is out of range")
        position[gtid.domain] = gtid
    return position


def format_position(position: Position) -> str:
    return ",".join(str(position[d]) for d in sorted(position))


@dataclass(frozen=True)
class Missing:
    """Transactions of one domain that ``ahead`` has and ``behind`` lacks: seqnos
    ``first``..``last`` (``last`` from the server that wrote it)."""

    domain: int
    first: int
    last: Gtid

    def __str__(self) -> str:
        if self.first == self.last.seqno:
            return str(self.last)
        return f"{self.last.domain}-{self.last.server}-{self.first}..{self.last.seqno}"

    @property
    def count(self) -> int:
        return self.last.seqno - self.first + 1


def ahead_of(ahead: Position, behind: Position) -> list[Missing]:
    """What ``ahead`` holds past ``behind``, per domain (empty: ``behind`` has it all)."""
    found = []
    for domain in sorted(ahead):
        mine = ahead[domain]
        theirs = behind.get(domain)
        start = 0 if theirs is None else theirs.seqno
        if mine.seqno > start:
            found.append(Missing(domain, start + 1, mine))
    return found


def describe(missing: list[Missing]) -> str:
    """``0-11-43..50 (8 transactions)`` for an operator."""
    total = sum(m.count for m in missing)
    ranges = ", ".join(str(m) for m in missing)
    return f"{ranges} ({total} transaction{'s' if total != 1 else ''})"
