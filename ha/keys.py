"""The pair keys in force: the current one, and during a rekey the previous one.

A rekey (``voxnode ha pair-key generate|set`` on a running pair) must not make the nodes
lose each other while the operator carries the new key to the other node: until the peer's
messages verify under the new key (it has it), every message is signed with both keys and
accepted under either, so a peer that still has only the old key, or already only the new
one, goes on hearing this node. The window has no time limit: ending it while the peer
still uses the old key would make two masters; status says the rekey is pending until the
peer has the key. A second rekey during the window keeps the previous key (the one the
peer has), not the unconfirmed one in between.
"""

from __future__ import annotations

from collections.abc import Callable

REKEY_WINDOW_S = float("inf")  # until the peer uses the new key (see the docstring)


class Keyring:
    """``parties``: who must show it has the new key before the previous one goes: the
    peer, and the arbiter when one is configured (its key file is changed by hand)."""

    def __init__(self, current: bytes, previous: bytes | None = None,
                 previous_until: float = 0.0, *, wall: Callable[[], float],
                 on_change: Callable[[Keyring], None] | None = None,
                 parties: frozenset[str] = frozenset({"peer"})) -> None:
        self.current = current
        self.previous = previous if previous != current else None
        self.previous_until = previous_until  # wall clock: the window survives a restart
        self._wall = wall
        self._on_change = on_change
        self.parties = parties
        self.confirmed: set[str] = set()  # parties that used the current key since the rekey

    def _previous(self) -> bytes | None:
        if self.previous is not None and self._wall() < self.previous_until:
            return self.previous
        return None


    def signing(self) -> list[bytes]:
        """The keys a message is signed with, the current one first."""
        previous = self._previous()
        return [self.current] if previous is None else [self.current, previous]

    def verifying(self) -> list[bytes]:
        """The keys a message is accepted under, the current one first (index 0)."""
        return self.signing()

    def rekey(self, new: bytes, window: float = REKEY_WINDOW_S) -> None:
        if new == self.current:
            return
        if self._previous() is None:
            self.previous = self.current
        # else: a window is open and the peer has not shown it has the current key: keep
        # the previous one, the key the peer is known to have
        self.current = new
        if self.previous == new:
            self.previous = None
        self.previous_until = self._wall() + window
        self.confirmed = set()
        self._changed()

    def confirm(self, party: str = "peer") -> bool:
        """``party`` signed with the current key; once every party has, the previous key is
        not needed any more. True if that closed a window."""
        if self.previous is None:
            return False
        self.confirmed.add(party)
        if not self.parties <= self.confirmed:
            return False
        self.previous, self.previous_until = None, 0.0
        self._changed()
        return True

    def waiting_for(self) -> list[str]:
        """The parties that have not yet used the new key, while a window is open."""
        return sorted(self.parties - self.confirmed) if self._previous() is not None else []

    def pending_until(self) -> float | None:
        """When the window closes, while one is open."""
        return self.previous_until if self._previous() is not None else None

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)
