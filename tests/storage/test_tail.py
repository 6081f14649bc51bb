"""The hot tail on its own: contiguity, byte budget, truncation, compaction."""

from __future__ import annotations

import gc

from changeagent.raft.entry import Entry
from changeagent.storage.tail import (
    ENTRY_OVERHEAD_BYTES,
    TailCache,
    TailRecord,
    make_record,
    record_entry,
)


def _records(low: int, high: int, term: int = 1, size: int = 10) -> list[TailRecord]:
    return [make_record(Entry(index, term, 0, b"x" * size), ()) for index in range(low, high)]


def _indices(tail: TailCache) -> list[int]:
    first, records = tail.window(tail.start, tail.end)
    return list(range(first, first + len(records)))


COST = 10 + ENTRY_OVERHEAD_BYTES


def test_append_and_get() -> None:
    tail = TailCache(1 << 20, start=1)
    tail.append(1, _records(1, 6))
    assert (tail.start, tail.end, len(tail)) == (1, 6, 5)
    record = tail.get(3)
    assert record is not None
    assert record_entry(3, record) == Entry(3, 1, 0, b"x" * 10)
    assert tail.get(0) is None and tail.get(6) is None
    assert tail.size_bytes == 5 * COST


def test_records_copy_data_and_leave_the_cycle_collector() -> None:
    data = b"y" * 50
    record = make_record(Entry(1, 1, 0, data, "k"), ("a",))
    assert record[2] == data and record[2] is not data
    gc.collect()
    assert not gc.is_tracked(record)  # full collections never walk the tail


def test_budget_evicts_the_oldest() -> None:
    tail = TailCache(3 * COST, start=1)
    tail.append(1, _records(1, 11))
    assert _indices(tail) == [8, 9, 10]
    assert tail.size_bytes == 3 * COST
    tail.append(11, _records(11, 12))
    assert _indices(tail) == [9, 10, 11]


def test_zero_budget_keeps_nothing_but_tracks_the_end() -> None:
    tail = TailCache(0, start=1)
    tail.append(1, _records(1, 4))
    assert (len(tail), tail.start, tail.end) == (0, 4, 4)
    assert tail.window(1, 10) == (4, [])


def test_many_evictions_keep_the_list_small() -> None:
    tail = TailCache(10 * COST, start=1)
    for low in range(1, 5001, 10):
        tail.append(low, _records(low, low + 10))
    assert _indices(tail) == list(range(4991, 5001))
    assert len(tail._records) < 3000  # evicted slots are dropped in bulk


def test_truncate_replaces_a_suffix() -> None:
    tail = TailCache(1 << 20, start=1)
    tail.append(1, _records(1, 11))
    tail.append(6, _records(6, 8, term=2))
    assert _indices(tail) == [1, 2, 3, 4, 5, 6, 7]
    record = tail.get(6)
    assert record is not None and record[0] == 2
    assert tail.size_bytes == 7 * COST


def test_truncate_below_start_resets() -> None:
    tail = TailCache(3 * COST, start=1)
    tail.append(1, _records(1, 11))
    tail.append(4, _records(4, 5, term=2))
    assert _indices(tail) == [4]
    assert tail.start == 4


def test_compact_through() -> None:
    tail = TailCache(1 << 20, start=1)
    tail.append(1, _records(1, 11))
    tail.compact_through(4)
    assert _indices(tail) == list(range(5, 11))
    tail.compact_through(2)  # below start: nothing to do
    assert tail.start == 5
    tail.compact_through(20)  # a snapshot past the end
    assert (len(tail), tail.start, tail.end) == (0, 21, 21)
    tail.append(21, _records(21, 23))
    assert _indices(tail) == [21, 22]


def test_window_is_clamped() -> None:
    tail = TailCache(1 << 20, start=5)
    tail.append(5, _records(5, 10))
    first, records = tail.window(0, 100)
    assert first == 5 and len(records) == 5
    assert tail.window(8, 3)[1] == []
    assert tail.window(20, 30)[1] == []
