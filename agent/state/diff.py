"""Field-level differences between two documents, for plans and `config apply --dry-run`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any  # None when the field is added
    new: Any  # None when the field is removed

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "old": self.old, "new": self.new}


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and (value or not prefix):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def diff_documents(old: dict[str, Any] | None, new: dict[str, Any]) -> list[FieldChange]:
    """Leaves that differ; lists are compared whole (an address list is one setting)."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten(old or {}, "", before)
    _flatten(new, "", after)
    changes = []
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a != b:
            changes.append(FieldChange(path, a, b))
    return changes
