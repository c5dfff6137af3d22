"""What the failover daemon keeps on disk: the pair key, its epoch and role, its events.

Under ``<state-dir>/ha/``: ``pair.key`` (0600, 64 hex digits, never logged), during a rekey
``pair.key.previous`` (0600: the previous key and until when it is accepted), ``state.json``
(epoch, last role and the epoch reserved ahead, so an epoch only grows, even across
restarts) and ``events.jsonl``
(one transition per line; the newest are read back for ``voxnode ha events``).
"""

from __future__ import annotations

import json
import secrets
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import InvalidInput, Problem
from agent.ports.files import atomic_write
from ha.protocol import KEY_BYTES, Role, parse_key

KEEP_EVENTS = 1000


@dataclass
class Persisted:
    epoch: int = 0
    role: Role = Role.INIT
    # the highest epoch this node may take without writing first: written ahead, off the
    # promotion's path, so a takeover needs no fsync before the node IP comes up and a disk
    # that fills up later does not stop it (the epoch still only grows)
    reserved: int = 0


class HAStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "ha"
        self.key_file = self.dir / "pair.key"
        self.previous_file = self.dir / "pair.key.previous"
        self.state_file = self.dir / "state.json"
        self.events_file = self.dir / "events.jsonl"
        # present while the database follows the roles: if the agent dies, its unit's
        # ExecStopPost makes the database read-only (the role cannot be held without it)
        self.fence_file = self.dir / "database-fence"

    # --- pair key ------------------------------------------------------------------------

    def key(self) -> bytes | None:
        try:
            return parse_key(self.key_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def new_key_text() -> str:
        return secrets.token_hex(KEY_BYTES)

    @staticmethod
    def check_key(text: str) -> None:
        try:
            parse_key(text)
        except ValueError as exc:
            raise InvalidInput("the pair key is not valid", problems=[Problem("key", str(exc))],
                               remedy="Copy the key printed by `voxnode ha pair-key generate` "
                               "on the other node.") from None

    def write_key(self, text: str) -> None:
        self.check_key(text)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.key_file, (text.strip().lower() + "\n").encode(), 0o600)

    def previous_key(self) -> tuple[bytes | None, float]:
        """The previous key of a rekey in progress and until when (wall clock) it counts."""
        try:
            raw = json.loads(self.previous_file.read_text())
            return parse_key(str(raw["key"])), float(raw["until"])
        except (OSError, ValueError, KeyError, TypeError):
            return None, 0.0

    def save_previous_key(self, key: bytes | None, until: float) -> None:
        if key is None:
            self.previous_file.unlink(missing_ok=True)
            return
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = json.dumps({"key": key.hex(), "until": until})
        atomic_write(self.previous_file, (body + "\n").encode(), 0o600)

    # --- epoch and role ------------------------------------------------------------------

    def set_fence(self, on: bool) -> None:
        if on:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.fence_file.touch(mode=0o600)
        else:
            self.fence_file.unlink(missing_ok=True)

    def load(self) -> Persisted:
        try:
            raw = json.loads(self.state_file.read_text())
            epoch = int(raw["epoch"])
            return Persisted(epoch, Role(raw["role"]), max(epoch, int(raw.get("reserved", 0))))
        except (OSError, ValueError, KeyError, TypeError):
            return Persisted()

    def save(self, persisted: Persisted) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {"epoch": persisted.epoch, "role": persisted.role.value,
                "reserved": max(persisted.epoch, persisted.reserved)}
        atomic_write(self.state_file, (json.dumps(body) + "\n").encode(), 0o600)

    # --- events ----------------------------------------------------------------------------

    def append_event(self, event: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.events_file, "a") as fh:
            fh.write(json.dumps(event) + "\n")
        if self.events_file.stat().st_size > 4 * 1024 * 1024:
            kept = self.events(KEEP_EVENTS)
            atomic_write(self.events_file,
                         "".join(json.dumps(e) + "\n" for e in kept).encode(), 0o600)

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        try:
            with open(self.events_file) as fh:
                lines = deque(fh, maxlen=limit)
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash
        return out
