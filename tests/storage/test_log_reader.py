"""The LogReader contract: bounds, terms, entry ranges, Compacted and Unavailable."""

from __future__ import annotations

import pytest

from changeagent.raft.entry import Entry
from changeagent.raft.interfaces import Compacted, LogReader, Snapshot, Unavailable
from changeagent.storage import Storage, WriteBatch

from .conftest import append, change, noop, write


def test_storage_is_a_log_reader(storage: Storage) -> None:
    reader: LogReader = storage
    assert reader.first_index() == 1


def test_empty_log(storage: Storage) -> None:
    assert storage.first_index() == 1
    assert storage.last_index() == 0
    assert storage.term(0) == 0
    assert storage.snapshot() == Snapshot()
    assert storage.entries(1, 1, 100) == []
    with pytest.raises(Unavailable):
        storage.term(1)
    with pytest.raises(Unavailable):
        storage.entries(1, 2, 100)


def test_terms_and_entries(storage: Storage) -> None:
    entries = [noop(1, 1), change(2, 1), change(3, 2), noop(4, 3), change(5, 3)]
    append(storage, *entries)
    assert storage.last_index() == 5
    assert [storage.term(index) for index in range(6)] == [0, 1, 1, 2, 3, 3]
    assert storage.entries(1, 6, 1 << 20) == entries
    assert storage.entries(2, 4, 1 << 20) == entries[1:3]
    with pytest.raises(Unavailable):
        storage.term(6)
    with pytest.raises(Unavailable):
        storage.entries(3, 7, 100)
    with pytest.raises(Compacted):
        storage.entries(0, 2, 100)


def test_entries_respect_max_bytes_but_return_at_least_one(storage: Storage) -> None:
    entries = [Entry(index, 1, 0, b"x" * 100) for index in range(1, 11)]
    append(storage, *entries)
    assert storage.entries(1, 11, 0) == entries[:1]
    assert storage.entries(1, 11, 99) == entries[:1]
    assert storage.entries(1, 11, 200) == entries[:2]
    assert storage.entries(1, 11, 250) == entries[:2]
    assert storage.entries(3, 11, 1000) == entries[2:]


def test_compacted_below_snapshot(storage: Storage) -> None:
    append(storage, *[change(index) for index in range(1, 11)])
    write(storage, WriteBatch(compact_to=4))
    assert storage.first_index() == 5
    assert storage.snapshot().index == 4
    assert storage.term(4) == 1  # the snapshot's term
    with pytest.raises(Compacted):
        storage.term(3)
    with pytest.raises(Compacted):
        storage.entries(4, 6, 100)
    assert [entry.index for entry in storage.entries(5, 11, 1 << 20)] == list(range(5, 11))


def test_reads_that_miss_the_tail_fall_back_to_sqlite(data_dir: object) -> None:
    from pathlib import Path

    assert isinstance(data_dir, Path)
    with Storage.open(data_dir, tail_cache_bytes=3 * 300, tail_warm_bytes=0) as storage:
        entries = [Entry(index, index, 0, b"y" * 100) for index in range(1, 21)]
        append(storage, *entries)
        assert storage.stats()["tail_entries"] < 5
        assert storage.term(1) == 1
        assert storage.entries(1, 21, 1 << 20) == entries
        assert storage.entries(19, 21, 1 << 20) == entries[18:]
