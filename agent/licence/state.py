"""What the node holds about its licence, on disk, and the pure state machine over it.

Files under ``<state-dir>/licence/`` (each written to a temp file, fsynced, renamed):

- ``licence.json``: the installed licence, exactly as the server signed it; verified with
  the vendor key every time it is read, so an altered file is never trusted;
- ``state.json``: the rest (``Record``): a pending activation, the removal time, the
  checks (last attempt, last success, consecutive failures), an update found by a check,
  the assignments of counted modules, and the latest time this node has seen.

States (``evaluate``): OFF (never licensed) → CODE_SENT (a code was emailed) → ACTIVE →
(removal) GRACE for 30 calendar days → UNLICENSED; EXPIRED once ``valid_until`` passes.
Time for licence dates is never earlier than the latest time already seen, so moving the
clock back (detected past one day) cannot lengthen a grace period or revive an expired
licence.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.licence.document import Licence
from agent.ports.files import atomic_write

CHECK_INTERVAL_S = 12 * 3600.0
CHECK_JITTER_S = 30 * 60.0
GRACE_DAYS = 30
GRACE_S = GRACE_DAYS * 86400.0  # calendar days: weekends and holidays count
CLOCK_BACK_TOLERANCE_S = 86400.0
ALARM_AFTER_FAILURES = 3


class LicenceState(StrEnum):
    OFF = "OFF"
    CODE_SENT = "CODE_SENT"
    ACTIVE = "ACTIVE"
    GRACE = "GRACE"
    UNLICENSED = "UNLICENSED"
    EXPIRED = "EXPIRED"


@dataclass
class Pending:
    serial: str
    email: str
    requested_at: float


@dataclass
class Record:
    pending: Pending | None = None
    removed_at: float | None = None
    revoked_at: float | None = None  # a check heard that the vendor revoked the serial
    ever_licensed: bool = False
    last_check: float | None = None  # last attempt, automatic or manual
    last_ok: float | None = None  # last successful check
    failures: int = 0  # consecutive failed checks
    failing_since: float | None = None
    last_error: str = ""
    max_seen: float = 0.0
    available: str | None = None  # signed text of a newer licence found by a check
    assignments: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ended(self) -> bool:
        """Removed here, or revoked by the vendor: the licence is not checked any more."""
        return self.removed_at is not None or self.revoked_at is not None

    def answered(self, now: float) -> None:
        """A check the server answered: the failures in a row are over."""
        self.failures, self.failing_since, self.last_error = 0, None, ""
        self.last_ok = now

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        pending = data.get("pending")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["pending"] = Pending(**pending) if isinstance(pending, dict) else None
        return cls(**known)


class LicenceFiles:
    """``<state-dir>/licence/``: the installed licence text and the record."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "licence"
        self.licence_path = self.dir / "licence.json"
        self.record_path = self.dir / "state.json"

    def _ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)

    def read_licence(self) -> bytes | None:
        try:
            return self.licence_path.read_bytes()
        except FileNotFoundError:
            return None

    def write_licence(self, text: str) -> None:
        self._ensure()
        atomic_write(self.licence_path, text.encode(), mode=0o640)

    def read_record(self) -> Record:
        try:
            data = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return Record()
        except (ValueError, OSError):
            return Record()  # a damaged record loses history, never the licence itself
        return Record.from_dict(data) if isinstance(data, dict) else Record()

    def write_record(self, record: Record) -> None:
        self._ensure()
        atomic_write(self.record_path, json.dumps(record.to_dict(), indent=2).encode(),
                     mode=0o640)


@dataclass(frozen=True)
class Status:
    """The evaluated state at one moment (pure function of record, licence and time)."""

    state: LicenceState
    modules: frozenset[str]  # what the node may run now
    reason: str
    grace_until: float | None = None
    clock_warning: str = ""
    alarm: str = ""
    next_transition: float | None = None  # when the state changes by time alone

    @property
    def active(self) -> bool:
        return self.state in (LicenceState.ACTIVE, LicenceState.GRACE)


def effective_now(record: Record, now: float) -> float:
    return max(now, record.max_seen)


def clock_warning(record: Record, now: float) -> str:
    behind = record.max_seen - now
    if behind <= CLOCK_BACK_TOLERANCE_S:
        return ""
    return (f"the system clock is {behind / 86400:.1f} days behind the latest time this node "
            "has seen; licence dates use that later time — fix the clock (NTP)")


def alarm(record: Record) -> str:
    if record.failures < ALARM_AFTER_FAILURES:
        return ""
    return (f"the licence server has not answered {record.failures} checks in a row "
            f"(last error: {record.last_error}); the node keeps its licence meanwhile")


def evaluate(record: Record, licence: Licence | None, invalid: str, now: float) -> Status:
    """The state, the modules in force and the operator sentence saying why.

    ``invalid`` is the reason the installed file was refused (altered, another node...).
    """
    status = _evaluate(record, licence, invalid, effective_now(record, now))
    return replace(status, clock_warning=clock_warning(record, now), alarm=alarm(record))


def _evaluate(record: Record, licence: Licence | None, invalid: str, t: float) -> Status:
    if licence is not None and not invalid and record.revoked_at is not None:
        return Status(LicenceState.UNLICENSED, frozenset(),
                      f"no licence is active on this node (licence {licence.serial} was "
                      "revoked by the vendor)")
    if licence is not None and not invalid:
        expired = licence.valid_until is not None and t >= licence.valid_until
        until = licence.valid_until
        if record.removed_at is not None:
            grace_until = record.removed_at + GRACE_S
            if t < grace_until and not expired:
                end = min(grace_until, until) if until is not None else grace_until
                return Status(LicenceState.GRACE, licence.enabled_modules,
                              f"licence {licence.serial} removed: the node works unlicensed "
                              f"until the grace period ends", grace_until,
                              next_transition=end)
            if not expired:
                return Status(LicenceState.UNLICENSED, frozenset(),
                              f"no licence is active on this node (licence {licence.serial} "
                              f"was removed and its {GRACE_DAYS}-day grace period is over)",
                              grace_until)
        if expired:
            return Status(LicenceState.EXPIRED, frozenset(),
                          f"no licence is active on this node (licence {licence.serial} "
                          "expired)")
        state = LicenceState.CODE_SENT if record.pending else LicenceState.ACTIVE
        return Status(state, licence.enabled_modules, f"licence {licence.serial} is active",
                      next_transition=until)
    if record.pending is not None:
        return Status(LicenceState.CODE_SENT, frozenset(),
                      f"no licence is active on this node (a verification code was sent for "
                      f"serial {record.pending.serial}: run `voxnode license verify --code C`)")
    if invalid:
        return Status(LicenceState.UNLICENSED, frozenset(),
                      f"no licence is active on this node ({invalid})")
    if record.ever_licensed:
        return Status(LicenceState.UNLICENSED, frozenset(),
                      "no licence is active on this node (state UNLICENSED)")
    return Status(LicenceState.OFF, frozenset(),
                  "no licence is active on this node (state OFF: activate one with `voxnode "
                  "license activate --serial S --email E`)")


def next_check_at(record: Record, now: float, jitter: float) -> float:
    """When the automatic check is due: 12 h after the last attempt, plus ``jitter`` (±30
    min, drawn by the caller) so a fleet does not hit the server at once."""
    if record.last_check is None:
        return now
    return record.last_check + CHECK_INTERVAL_S + jitter
