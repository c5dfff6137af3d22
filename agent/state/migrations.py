"""Explicit schema migrations of the desired-state document.

``MIGRATIONS[n]`` turns a version-``n`` document into a version-``n + 1`` document. Each
migration is a pure function of a plain mapping, golden-tested in tests/unit. Version 1
is the first released schema.

- 1 → 2: ``ha.replication_bandwidth_kb`` becomes ``ha.replication.bandwidth_kb`` (the
  ``ha.replication`` part holds the database, the paths and the lag limit too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.errors import InvalidInput, Problem
from agent.state.model import SCHEMA_VERSION

Document = dict[str, Any]
Migration = Callable[[Document], Document]



def _v1_to_v2(doc: Document) -> Document:
    ha = doc.get("ha")
    if isinstance(ha, Mapping) and "replication_bandwidth_kb" in ha:
        ha = dict(ha)
        bandwidth = ha.pop("replication_bandwidth_kb")
        replication = ha.get("replication")
        if replication is None:
            ha["replication"] = {"bandwidth_kb": bandwidth}
        elif isinstance(replication, Mapping) and "bandwidth_kb" not in replication:
            ha["replication"] = {**replication, "bandwidth_kb": bandwidth}
        else:  # a version-1 document has no ha.replication; say it rather than pick one
            raise InvalidInput("the document's replication bandwidth is given twice",
                               problems=[Problem("ha.replication_bandwidth_kb",
                                                 "schema 1 has no ha.replication: give the "
                                                 "bandwidth once, as ha.replication.bandwidth_kb "
                                                 "with schema_version 2")])
        doc["ha"] = ha
    doc["schema_version"] = 2
    return doc


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2}


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
