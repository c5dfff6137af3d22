"""The revision store: commits, history, crash leftovers, pending confirmations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import NotFound, StoreError
from agent.state import store as store_mod
from agent.state.document import validate_document
from agent.state.model import DesiredState
from agent.state.store import Pending, Store


def state(hostname: str = "pbx1") -> DesiredState:
    return validate_document({
        "schema_version": 1,
        "network": {"hostname": hostname,
                    "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}}},
    })


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "state")
    s.open()
    return s


def test_empty_store_has_no_head(store: Store) -> None:
    assert store.head() == 0
    assert store.current() is None
    assert store.history() == []


def test_commits_are_numbered_and_readable(store: Store) -> None:
    first = store.commit(state("pbx1"), source="apply", comment="initial")
    second = store.commit(state("pbx2"), source="set")
    assert (first.revision, second.revision) == (1, 2)
    current = store.current()
    assert current is not None
    assert current.state.network.hostname == "pbx2"
    assert store.load(1).state.network.hostname == "pbx1"
    assert [m.revision for m in store.history()] == [2, 1]
    assert store.history()[1].comment == "initial"


def test_revision_file_is_a_plain_document_usable_with_apply(store: Store) -> None:
    store.commit(state(), source="apply")
    text = (store.revisions_dir / "00000001" / "state.yaml").read_text()
    assert text.startswith("schema_version: 2\n")
    assert "hostname: pbx1" in text


def test_unknown_revision_is_not_found(store: Store) -> None:
    store.commit(state(), source="apply")
    with pytest.raises(NotFound) as info:
        store.load(7)
    assert info.value.message == "revision 7 does not exist (revisions kept: 1-1)"


def test_interrupted_commit_leaves_no_revision(store: Store) -> None:
    store.commit(state(), source="apply")
    leftover = store.revisions_dir / ".tmp-2-abc"
    leftover.mkdir()
    (leftover / "state.yaml").write_text("schema_version: 1\n")
    store.open()  # what the agent does at start
    assert not leftover.exists()
    assert store.head() == 1


def test_half_written_revision_without_state_is_ignored(store: Store) -> None:
    store.commit(state(), source="apply")
    (store.revisions_dir / "00000002").mkdir()
    assert store.head() == 1


def test_corrupted_revision_is_a_store_error(store: Store) -> None:
    store.commit(state(), source="apply")
    (store.revisions_dir / "00000001" / "state.yaml").write_text("schema_version: 1\n")
    with pytest.raises(StoreError) as info:
        store.current()
    assert "revision 1" in info.value.message
    assert "no longer validates" in info.value.message


def test_old_revisions_are_pruned(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "KEEP_REVISIONS", 3)
    for i in range(5):
        store.commit(state(f"pbx{i}"), source="apply")
    assert store.revision_numbers() == [3, 4, 5]


def test_pending_marker_round_trip(store: Store) -> None:
    assert store.pending() is None
    store.set_pending(Pending(2, 1, 1234.5))
    assert store.pending() == Pending(2, 1, 1234.5)
    store.clear_pending()
    assert store.pending() is None
    store.clear_pending()  # idempotent


def test_unreadable_pending_marker_counts_as_expired(store: Store) -> None:
    store.commit(state("a"), source="apply")
    store.commit(state("b"), source="apply")
    store.pending_file.write_text("{not json")
    assert store.pending() == Pending(2, 1, 0.0)


def test_meta_is_json(store: Store) -> None:
    store.commit(state(), source="rollback", comment="back to 1")
    meta = json.loads((store.revisions_dir / "00000001" / "meta.json").read_text())
    assert meta["source"] == "rollback"
    assert meta["comment"] == "back to 1"
