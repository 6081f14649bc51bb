"""Replacing a conflicting suffix, compacting a prefix, installing a snapshot."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from changeagent.raft.entry import Entry
from changeagent.raft.interfaces import Compacted, Membership, Snapshot, Unavailable
from changeagent.storage import Storage, WriteBatch
from changeagent.storage.reads import entries_between

from .conftest import append, change, noop, write


def _sqlite_entries(data_dir: Path) -> list[Entry]:
    connection = sqlite3.connect(data_dir / "changeagent.db")
    try:
        rows = connection.execute("SELECT min(idx), max(idx) FROM entries").fetchone()
        if rows[0] is None:
            return []
        # The storage's own verified read, on a connection of our own.
        return entries_between(connection, rows[0], rows[1] + 1, 1 << 62)
    finally:
        connection.close()


def _table(data_dir: Path, query: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(data_dir / "changeagent.db")
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def _assert_tail_matches_sqlite(storage: Storage, data_dir: Path) -> None:
    """Everything readable through the storage (tail or not) equals the database."""
    first, last = storage.first_index(), storage.last_index()
    on_disk = _sqlite_entries(data_dir)
    assert [entry.index for entry in on_disk] == list(range(first, last + 1))
    assert storage.entries(first, last + 1, 1 << 62) == on_disk
    for entry in on_disk:
        assert storage.term(entry.index) == entry.term


def test_truncation_replaces_the_conflicting_suffix(storage: Storage, data_dir: Path) -> None:
    append(storage, noop(1), change(2, tags=["a"], key="k2"), change(3, tags=["b"], key="k3"),
           change(4, key="k4"))
    replacement = [change(3, term=2, tags=["c"], key="new3")]
    append(storage, *replacement)
    assert storage.last_index() == 3
    assert storage.term(3) == 2
    assert storage.entries(1, 4, 1 << 20)[2] == replacement[0]
    assert storage.idempotency_lookup("k3") is None
    assert storage.idempotency_lookup("k4") is None
    assert storage.idempotency_lookup("k2") == 2
    assert storage.idempotency_lookup("new3") == 3
    assert _table(data_dir, "SELECT tag, idx FROM tags ORDER BY idx") == [("a", 2), ("c", 3)]
    assert storage.read_changes(0, 10, ["b"], None, 10).bodies == []
    with pytest.raises(Unavailable):
        storage.term(4)
    _assert_tail_matches_sqlite(storage, data_dir)


def test_truncation_then_append_within_one_group(storage: Storage, data_dir: Path) -> None:
    futures = [
        storage.submit(WriteBatch(entries=[change(1), change(2), change(3)])),
        storage.submit(WriteBatch(entries=[change(2, term=2), change(3, term=2)])),
        storage.submit(WriteBatch(entries=[change(4, term=2)])),
        storage.submit(WriteBatch(entries=[change(3, term=3)])),
    ]
    for future in futures:
        future.result(timeout=30)
    assert [storage.term(index) for index in (1, 2, 3)] == [1, 2, 3]
    assert storage.last_index() == 3
    _assert_tail_matches_sqlite(storage, data_dir)


def test_truncation_below_the_tail_start(data_dir: Path) -> None:
    with Storage.open(data_dir, tail_cache_bytes=1_000) as storage:
        append(storage, *[change(index) for index in range(1, 31)])
        assert storage.stats()["tail_entries"] < 10
        append(storage, change(5, term=2), change(6, term=2))
        assert storage.last_index() == 6
        assert storage.term(5) == 2
        _assert_tail_matches_sqlite(storage, data_dir)


def test_compaction_deletes_prefix_with_tags_and_keys(storage: Storage, data_dir: Path) -> None:
    append(storage, *[change(index, tags=["t"], key=f"k{index}") for index in range(1, 11)])
    membership = Membership(voters=frozenset({1}))
    write(storage, WriteBatch(compact_to=6, compact_membership=membership, compact_data=b"d"))
    assert storage.snapshot() == Snapshot(index=6, term=1, membership=membership, data=b"d")
    assert storage.first_index() == 7
    assert storage.first_user_index() == 7
    assert _table(data_dir, "SELECT min(idx) FROM tags") == [(7,)]
    assert _table(data_dir, "SELECT count(*) FROM idempotency") == [(4,)]
    assert storage.idempotency_lookup("k6") is None
    assert storage.get_change(6) is None
    page = storage.read_changes(0, 100, ["t"], None, 10)
    assert len(page.bodies) == 4
    assert page.at_start
    assert page.compacted_through == 6
    _assert_tail_matches_sqlite(storage, data_dir)
    # The next compaction carries membership and data forward.
    write(storage, WriteBatch(compact_to=8))
    assert storage.snapshot() == Snapshot(index=8, term=1, membership=membership, data=b"d")


def test_compaction_with_an_explicit_snapshot_record(storage: Storage) -> None:
    append(storage, change(1), change(2, term=2), change(3, term=2))
    record = Snapshot(index=2, term=2, data=b"settings")
    write(storage, WriteBatch(snapshot=record, compact_to=2))
    assert storage.snapshot() == record
    assert storage.term(2) == 2
    with pytest.raises(Compacted):
        storage.term(1)


def test_compaction_of_everything(storage: Storage, data_dir: Path) -> None:
    append(storage, change(1), change(2))
    write(storage, WriteBatch(compact_to=2))
    assert (storage.first_index(), storage.last_index()) == (3, 2)
    assert storage.entries(3, 3, 10) == []
    assert storage.first_user_index() == 0
    append(storage, change(3))
    assert storage.first_user_index() == 3
    _assert_tail_matches_sqlite(storage, data_dir)


def test_installing_a_snapshot_that_matches_keeps_the_suffix(
    storage: Storage, data_dir: Path
) -> None:
    append(storage, *[change(index) for index in range(1, 8)])
    write(storage, WriteBatch(snapshot=Snapshot(index=4, term=1)))
    assert (storage.first_index(), storage.last_index()) == (5, 7)
    _assert_tail_matches_sqlite(storage, data_dir)


def test_installing_a_snapshot_that_conflicts_discards_the_log(
    storage: Storage, data_dir: Path
) -> None:
    append(storage, *[change(index, key=f"k{index}") for index in range(1, 8)])
    write(storage, WriteBatch(snapshot=Snapshot(index=5, term=9)))
    assert (storage.first_index(), storage.last_index()) == (6, 5)
    assert storage.idempotency_lookup("k7") is None
    assert _sqlite_entries(data_dir) == []
    write(storage, WriteBatch(snapshot=Snapshot(index=20, term=9)))
    assert (storage.first_index(), storage.last_index()) == (21, 20)
    assert storage.term(20) == 9
    append(storage, change(21, term=9))
    _assert_tail_matches_sqlite(storage, data_dir)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (WriteBatch(entries=[change(5)]), "gap"),
        (WriteBatch(entries=[change(2)]), "compaction point"),
        (WriteBatch(compact_to=9), "outside the log"),
        (WriteBatch(compact_to=1), "outside the log"),
        (WriteBatch(snapshot=Snapshot(index=3, term=5), compact_to=3), "term"),
        (WriteBatch(snapshot=Snapshot(index=1, term=1)), "older"),
    ],
)
def test_batches_that_do_not_fit_are_rejected_alone(
    storage: Storage, batch: WriteBatch, message: str
) -> None:
    append(storage, change(1), change(2), change(3))
    write(storage, WriteBatch(compact_to=2))
    bad = storage.submit(batch)
    good = storage.submit(WriteBatch(entries=[change(4)]))
    with pytest.raises(ValueError, match=message):
        bad.result(timeout=30)
    good.result(timeout=30)
    assert storage.last_index() == 4
    assert storage.failure is None


def test_malformed_batches_are_refused_at_submit(storage: Storage) -> None:
    with pytest.raises(ValueError, match="contiguous"):
        storage.submit(WriteBatch(entries=[change(1), change(3)]))
    with pytest.raises(ValueError, match="reserved"):
        storage.submit(WriteBatch(meta={"storage.snapshot": b""}))
    with pytest.raises(ValueError, match=">= 1"):
        storage.submit(WriteBatch(entries=[change(0)]))
    with pytest.raises(ValueError, match="compact_to"):
        storage.submit(WriteBatch(snapshot=Snapshot(index=1), compact_to=2))
