"""The hot tail: the most recent durable entries, held in memory.

The tail is always a contiguous run of the log that ends at the last durable
entry: [start, end). It is bounded by bytes and loses entries from its head.
The Raft core (term, entries) and consumers at the tail read from it without
touching SQLite.

Entries are held as plain tuples of immutable atoms (`TailRecord`), not as
`Entry` objects: CPython stops tracking such tuples in its cycle collector,
so a full collection does not walk hundreds of thousands of cached entries
(64 ms for 400k `Entry` objects, 11 ms for tuples, on this machine).

Not thread-safe by itself: `Storage` guards it with a lock and changes it only
after the transaction that made the change durable has committed.
"""

from __future__ import annotations

from typing import Final

from changeagent.raft.entry import Entry

# (term, type, data, key, tags); the index is implied by the position.
TailRecord = tuple[int, int, bytes, str, tuple[str, ...]]
TERM: Final = 0
TYPE: Final = 1
DATA: Final = 2
KEY: Final = 3
TAGS: Final = 4

# A rough per-entry cost of the Python objects around an entry's bytes (the
# record tuple, the bytes header, a list slot), so the byte budget is close to
# the memory actually held.
ENTRY_OVERHEAD_BYTES = 160
# Head evictions are applied to the list lazily, in bulk, to keep them O(1).
_COMPACT_SLACK_MIN = 1024

NO_TAGS: tuple[str, ...] = ()
_EVICTED: TailRecord = (0, 0, b"", "", NO_TAGS)


def record_cost_bytes(record: TailRecord) -> int:
    return len(record[DATA]) + len(record[KEY]) + ENTRY_OVERHEAD_BYTES


def make_record(entry: Entry, tags: tuple[str, ...]) -> TailRecord:
    """A record for `entry`, its data copied into a right-sized bytes object.

    orjson (3.x) returns bytes that keep their whole output buffer (4 KiB for a
    100-byte change), so holding the caller's objects would make the tail's
    real size many times its accounted size. Copying through a memoryview
    always allocates exactly len(data) bytes.
    """
    return (entry.term, entry.type, bytes(memoryview(entry.data)), entry.key, tags)


def record_entry(index: int, record: TailRecord) -> Entry:
    return Entry(index, record[TERM], record[TYPE], record[DATA], record[KEY])


class TailCache:
    """Entries [start, end) of the log, newest last, at most `budget_bytes` big."""

    def __init__(self, budget_bytes: int, start: int) -> None:
        self.budget_bytes = budget_bytes
        self._records: list[TailRecord] = []
        self._offset = 0  # records before _offset are evicted, awaiting bulk removal
        self._start = start
        self.size_bytes = 0

    @property
    def start(self) -> int:
        """Index of the first cached entry (== end when empty)."""
        return self._start

    @property
    def end(self) -> int:
        """One past the last cached entry: the log's last index + 1."""
        return self._start + len(self._records) - self._offset

    def __len__(self) -> int:
        return len(self._records) - self._offset

    def reset(self, start: int) -> None:
        """Empty the tail; the next entry it can take is `start`."""
        self._records = []
        self._offset = 0
        self._start = start
        self.size_bytes = 0

    def get(self, index: int) -> TailRecord | None:
        if self._start <= index < self.end:
            return self._records[self._offset + index - self._start]
        return None

    def window(self, low: int, high: int) -> tuple[int, list[TailRecord]]:
        """(index of the first, records) for cached indices in [low, high)."""
        low = max(low, self._start)
        high = min(high, self.end)
        if high <= low:  # also keeps negative positions out of the slice below
            return low, []
        base = self._offset - self._start
        return low, self._records[base + low : base + high]

    def append(self, first_index: int, records: list[TailRecord]) -> None:
        """Add records from `first_index` on: at `end`, over a suffix, or past a gap."""
        if not records:
            return
        if first_index < self.end:
            self.truncate_from(first_index)
        if first_index != self.end:  # below start after a truncation, or past a snapshot
            self.reset(first_index)
        self._records.extend(records)
        self.size_bytes += sum(map(record_cost_bytes, records))
        self.evict()

    def truncate_from(self, index: int) -> None:
        """Drop entries at `index` and above."""
        if index <= self._start:
            self.reset(index)
            return
        if index >= self.end:
            return
        cut = self._offset + index - self._start
        self.size_bytes -= sum(map(record_cost_bytes, self._records[cut:]))
        del self._records[cut:]

    def compact_through(self, index: int) -> None:
        """Drop entries at `index` and below (a compaction or snapshot)."""
        if index >= self.end - 1:
            self.reset(max(index + 1, self.end))
            return
        while self._start <= index:
            self._drop_first()
        self._maybe_compact_list()

    def evict(self) -> None:
        """Drop the oldest entries until the tail fits its budget."""
        while self.size_bytes > self.budget_bytes and len(self) > 0:
            self._drop_first()
        if len(self) == 0:
            self.reset(self.end)
        self._maybe_compact_list()

    def _drop_first(self) -> None:
        record = self._records[self._offset]
        self._records[self._offset] = _EVICTED
        self._offset += 1
        self._start += 1
        self.size_bytes -= record_cost_bytes(record)

    def _maybe_compact_list(self) -> None:
        if self._offset > _COMPACT_SLACK_MIN and self._offset * 2 > len(self._records):
            del self._records[: self._offset]
            self._offset = 0
