"""The hot tail on its own: contiguity, byte budget, truncation, compaction."""

from __future__ import annotations

from changeagent.raft.entry import Entry
from changeagent.storage.tail import ENTRY_OVERHEAD_BYTES, TailCache


def _entries(low: int, high: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [Entry(index, term, 0, b"x" * size) for index in range(low, high)]


def _fill(tail: TailCache, entries: list[Entry]) -> None:
    tail.append(entries, [()] * len(entries))


def _indices(tail: TailCache) -> list[int]:
    entries, _ = tail.window(tail.start, tail.end)
    return [entry.index for entry in entries]


COST = 10 + ENTRY_OVERHEAD_BYTES


def test_append_and_get() -> None:
    tail = TailCache(1 << 20, start=1)
    _fill(tail, _entries(1, 6))
    assert (tail.start, tail.end, len(tail)) == (1, 6, 5)
    assert tail.get(3) == Entry(3, 1, 0, b"x" * 10)
    assert tail.get(0) is None and tail.get(6) is None
    assert tail.size_bytes == 5 * COST


def test_budget_evicts_the_oldest() -> None:
    tail = TailCache(3 * COST, start=1)
    _fill(tail, _entries(1, 11))
    assert _indices(tail) == [8, 9, 10]
    assert tail.size_bytes == 3 * COST
    _fill(tail, _entries(11, 12))
    assert _indices(tail) == [9, 10, 11]


def test_zero_budget_keeps_nothing_but_tracks_the_end() -> None:
    tail = TailCache(0, start=1)
    _fill(tail, _entries(1, 4))
    assert (len(tail), tail.start, tail.end) == (0, 4, 4)
    assert tail.window(1, 10) == ([], [])


def test_many_evictions_keep_lists_small() -> None:
    tail = TailCache(10 * COST, start=1)
    for low in range(1, 5001, 10):
        _fill(tail, _entries(low, low + 10))
    assert _indices(tail) == list(range(4991, 5001))
    assert len(tail._entries) < 3000  # evicted slots are dropped in bulk


def test_truncate_replaces_a_suffix() -> None:
    tail = TailCache(1 << 20, start=1)
    _fill(tail, _entries(1, 11))
    _fill(tail, _entries(6, 8, term=2))
    assert _indices(tail) == [1, 2, 3, 4, 5, 6, 7]
    assert tail.get(6) == Entry(6, 2, 0, b"x" * 10)
    assert tail.size_bytes == 7 * COST


def test_truncate_below_start_resets() -> None:
    tail = TailCache(3 * COST, start=1)
    _fill(tail, _entries(1, 11))
    _fill(tail, _entries(4, 5, term=2))
    assert _indices(tail) == [4]
    assert tail.start == 4


def test_compact_through() -> None:
    tail = TailCache(1 << 20, start=1)
    _fill(tail, _entries(1, 11))
    tail.compact_through(4)
    assert _indices(tail) == list(range(5, 11))
    tail.compact_through(2)  # below start: nothing to do
    assert tail.start == 5
    tail.compact_through(20)  # a snapshot past the end
    assert (len(tail), tail.start, tail.end) == (0, 21, 21)
    _fill(tail, _entries(21, 23))
    assert _indices(tail) == [21, 22]


def test_window_is_clamped() -> None:
    tail = TailCache(1 << 20, start=5)
    _fill(tail, _entries(5, 10))
    entries, tags = tail.window(0, 100)
    assert [entry.index for entry in entries] == [5, 6, 7, 8, 9]
    assert tags == [()] * 5
    assert tail.window(8, 3) == ([], [])
    assert tail.window(20, 30) == ([], [])
