"""The agent's event log: every change of note is one log line and one entry here.

Entries are kept in memory (the most recent ones) for `voxnode status` and the API; the
journal keeps the full history through the log lines.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("voxnode.events")


@dataclass(frozen=True)
class Event:
    time: float
    kind: str  # e.g. config.applied, config.rolled-back, agent.started
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    def __init__(self, keep: int = 500) -> None:
        self._events: deque[Event] = deque(maxlen=keep)

    def emit(self, kind: str, message: str, *, level: int = logging.INFO) -> Event:
        event = Event(time.time(), kind, message)
        self._events.append(event)
        log.log(level, "%s: %s", kind, message)
        return event

    def recent(self, limit: int = 50) -> list[Event]:
        return list(self._events)[-limit:]
