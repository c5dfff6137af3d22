"""The revision store: numbered, immutable, crash-safe revisions of the desired state.

Layout under the state directory::

    revisions/00000007/state.yaml   the document, exactly as committed (usable with apply)
    revisions/00000007/meta.json    when, how (apply, set, rollback...) and why
    pending.json                    a confirmed apply waiting for `config confirm`

A revision is written in a hidden temp directory, fsynced, then renamed into place: the
rename is the commit. The committed revision is always the highest number, so there is no
pointer file that could disagree with the revisions. A rollback is a new revision whose
document is a copy of an older one, which keeps history linear and auditable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from agent.errors import InvalidInput, NotFound, StoreError
from agent.ports.files import atomic_write, fsync_dir
from agent.state.document import validate_document
from agent.state.model import DesiredState

KEEP_REVISIONS = 200
_REV_WIDTH = 8


@dataclass(frozen=True)
class RevisionMeta:
    revision: int
    created: str  # ISO 8601, UTC
    source: str  # apply | set | rollback | auto-rollback | initial
    comment: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Revision:
    meta: RevisionMeta
    state: DesiredState


@dataclass(frozen=True)
class Pending:
    """A committed revision that rolls back to ``previous`` unless confirmed by ``deadline``."""

    revision: int
    previous: int
    deadline: float  # unix time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dump_yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.revisions_dir = state_dir / "revisions"
        self.pending_file = state_dir / "pending.json"

    def open(self) -> None:
        """Create the layout and drop leftovers of a commit that was interrupted."""
        try:
            self.revisions_dir.mkdir(parents=True, exist_ok=True)
            for leftover in self.revisions_dir.glob(".tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError as exc:
            raise StoreError(
                f"cannot use state directory {self.state_dir}: {exc.strerror}"
            ) from exc

    # --- reading ---------------------------------------------------------------------------

    def revision_numbers(self) -> list[int]:
        numbers = []
        for entry in self.revisions_dir.iterdir():
            if entry.name.isdigit() and (entry / "state.yaml").is_file():
                numbers.append(int(entry.name))
        return sorted(numbers)

    def head(self) -> int:
        """The committed revision number; 0 when nothing was ever committed."""
        numbers = self.revision_numbers()
        return numbers[-1] if numbers else 0

    def _dir(self, number: int) -> Path:
        return self.revisions_dir / f"{number:0{_REV_WIDTH}d}"

    def meta(self, number: int) -> RevisionMeta:
        path = self._dir(number) / "meta.json"
        try:
            raw = json.loads(path.read_text())
            return RevisionMeta(
                revision=number,
                created=str(raw.get("created", "")),
                source=str(raw.get("source", "")),
                comment=str(raw.get("comment", "")),
            )
        except (OSError, ValueError):
            return RevisionMeta(number, "", "unknown")

    def load(self, number: int) -> Revision:
        path = self._dir(number) / "state.yaml"
        try:
            text = path.read_text()
        except FileNotFoundError:
            known = self.revision_numbers()
            span = f"{known[0]}-{known[-1]}" if known else "none yet"
            raise NotFound(
                f"revision {number} does not exist (revisions kept: {span})",
                remedy="List revisions with `voxnode config history`.",
            ) from None
        try:
            state = validate_document(yaml.safe_load(text))
        except InvalidInput as exc:
            raise StoreError(
                f"revision {number} in {path} no longer validates: {exc.message}",
                problems=exc.problems,
            ) from None
        return Revision(self.meta(number), state)

    def current(self) -> Revision | None:
        head = self.head()
        return self.load(head) if head else None

    def history(self) -> list[RevisionMeta]:
        return [self.meta(n) for n in reversed(self.revision_numbers())]

    # --- writing ---------------------------------------------------------------------------

    def commit(self, state: DesiredState, *, source: str, comment: str = "") -> RevisionMeta:
        number = self.head() + 1
        meta = RevisionMeta(
            revision=number,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            source=source,
            comment=comment,
        )
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{number}-", dir=self.revisions_dir))
        try:
            for name, text in (
                ("state.yaml", dump_yaml(state.to_document())),
                ("meta.json", json.dumps(meta.to_dict(), indent=2) + "\n"),
            ):
                with open(tmp / name, "w") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o750)
            fsync_dir(tmp)
            os.rename(tmp, self._dir(number))  # the commit point
            fsync_dir(self.revisions_dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"cannot commit revision {number}: {exc.strerror}") from exc
        self._prune()
        return meta

    def _prune(self) -> None:
        numbers = self.revision_numbers()
        for old in numbers[:-KEEP_REVISIONS]:
            shutil.rmtree(self._dir(old), ignore_errors=True)

    # --- confirmed apply -------------------------------------------------------------------

    def pending(self) -> Pending | None:
        try:
            raw = json.loads(self.pending_file.read_text())
            return Pending(int(raw["revision"]), int(raw["previous"]), float(raw["deadline"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # An unreadable marker must not leave an unconfirmed change in place forever:
            # treat it as expired so the caller rolls back to the revision before head.
            head = self.head()
            return Pending(head, max(head - 1, 0), 0.0)

    def set_pending(self, pending: Pending) -> None:
        atomic_write(self.pending_file, (json.dumps(pending.to_dict()) + "\n").encode(), 0o640)

    def clear_pending(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pending_file.unlink()
            fsync_dir(self.state_dir)
