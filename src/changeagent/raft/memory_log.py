"""An in-memory `LogReader` for driving the core in tests and benchmarks.

Pure like the rest of the core: no I/O. Shared by tests/raft's harness and
bench/raft_core.py so both exercise the same LogReader contract (including the
`max_bytes` limit that makes the core batch replication by size).
"""

from __future__ import annotations

from collections.abc import Iterable

from changeagent.raft.entry import Entry
from changeagent.raft.interfaces import Compacted, Snapshot, Unavailable


class MemoryLog:
    """An in-memory LogReader with the writes the node layer would do.

    For tests and benchmarks of the core: it keeps every entry in a list, so it is
    not for production (the node reads its log through SQLite storage).
    """

    def __init__(self, snapshot: Snapshot | None = None, entries: Iterable[Entry] = ()) -> None:
        self.snap = snapshot or Snapshot()
        self.ents: list[Entry] = list(entries)

    def first_index(self) -> int:
        return self.snap.index + 1

    def last_index(self) -> int:
        return self.snap.index + len(self.ents)

    def term(self, index: int) -> int:
        if index == self.snap.index:
            return self.snap.term
        if index < self.snap.index:
            raise Compacted(index)
        if index > self.last_index():
            raise Unavailable(index)
        return self.ents[index - self.snap.index - 1].term

    def entries(self, low: int, high: int, max_bytes: int) -> list[Entry]:
        if low < self.first_index():
            raise Compacted(low)
        if high > self.last_index() + 1:
            raise Unavailable(high)
        chosen = self.ents[low - self.snap.index - 1 : high - self.snap.index - 1]
        total = 0
        for position, entry in enumerate(chosen):
            total += len(entry.data)
            if total > max_bytes and position > 0:
                return chosen[:position]
        return chosen

    def internal_entries(self, low: int, high: int) -> list[Entry]:
        chosen = self.ents[max(0, low - self.snap.index - 1) : high - self.snap.index - 1]
        return [entry for entry in chosen if entry.type < 0]

    def snapshot(self) -> Snapshot:
        return self.snap

    # --- writes, as the node layer does them -------------------------------

    def append(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        if first <= self.snap.index:
            raise ValueError(f"append at {first} is below the snapshot at {self.snap.index}")
        del self.ents[first - self.snap.index - 1 :]
        self.ents.extend(entries)

    def install(self, snapshot: Snapshot) -> None:
        self.snap = snapshot
        self.ents = []

    def purge(self, snapshot: Snapshot) -> None:
        keep_from = snapshot.index - self.snap.index
        self.ents = self.ents[keep_from:]
        self.snap = snapshot
