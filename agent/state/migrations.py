"""Explicit schema migrations of the desired-state document.

``MIGRATIONS[n]`` turns a version-``n`` document into a version-``n + 1`` document. Each
migration is a pure function of a plain mapping, golden-tested in tests/unit. Version 1
is the first released schema, so the table is empty until the schema changes; the
machinery below is what every later version plugs into.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.errors import InvalidInput, Problem
from agent.state.model import SCHEMA_VERSION

Document = dict[str, Any]
Migration = Callable[[Document], Document]

MIGRATIONS: dict[int, Migration] = {}


def migrate(
    document: Mapping[str, Any],
    *,
    migrations: Mapping[int, Migration] = MIGRATIONS,
    current: int = SCHEMA_VERSION,
) -> Document:
    """Bring ``document`` to the ``current`` schema version, one step at a time."""
    version = document.get("schema_version")
    if version is None:
        raise InvalidInput(
            "the document has no schema version",
            problems=[Problem("schema_version", f"required (this agent writes {current})")],
        )
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidInput(
            "the document's schema version is not a number",
            problems=[Problem("schema_version", f"must be a whole number like {current}")],
        )
    if version > current:
        raise InvalidInput(
            "the document was written by a newer voxnode",
            problems=[
                Problem(
                    "schema_version",
                    f"{version} is newer than this agent understands ({current}); "
                    "update voxnode first",
                )
            ],
        )
    oldest = min(migrations, default=current)
    if version < oldest:
        raise InvalidInput(
            "the document's schema version is unknown",
            problems=[
                Problem("schema_version", f"{version} is not a known version ({oldest}-{current})")
            ],
        )
    doc: Document = dict(document)
    while doc["schema_version"] < current:
        step = migrations[doc["schema_version"]]
        before = doc["schema_version"]
        doc = step(dict(doc))
        if doc.get("schema_version") != before + 1:
            raise RuntimeError(f"migration from schema {before} did not bump schema_version")
    return doc
