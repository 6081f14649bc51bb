"""The hot tail: the most recent durable entries, held in memory.

The tail is always a contiguous run of the log that ends at the last durable
entry: [start, end). It is bounded by bytes and loses entries from its head.
The Raft core (term, entries) and consumers at the tail read from it without
touching SQLite.

Not thread-safe by itself: `Storage` guards it with a lock and changes it only
after the transaction that made the change durable has committed.
"""

from __future__ import annotations

from collections.abc import Iterator

from changeagent.raft.entry import Entry

# A rough per-entry cost of the Python objects around an entry's bytes
# (the Entry object, the bytes header, list slots), so the byte budget is
# close to the memory actually held.
ENTRY_OVERHEAD_BYTES = 160
# Head evictions are applied to the lists lazily, in bulk, to keep them O(1).
_COMPACT_SLACK_MIN = 1024

NO_TAGS: tuple[str, ...] = ()


def entry_cost_bytes(entry: Entry) -> int:
    return len(entry.data) + len(entry.key) + ENTRY_OVERHEAD_BYTES


class TailCache:
    """Entries [start, end) of the log, newest last, at most `budget_bytes` big."""

    def __init__(self, budget_bytes: int, start: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: list[Entry] = []
        self._tags: list[tuple[str, ...]] = []
        self._offset = 0  # entries before _offset are evicted, awaiting bulk removal
        self._start = start
        self.size_bytes = 0

    @property
    def start(self) -> int:
        """Index of the first cached entry (== end when empty)."""
        return self._start

    @property
    def end(self) -> int:
        """One past the last cached entry: the log's last index + 1."""
        return self._start + len(self._entries) - self._offset

    def __len__(self) -> int:
        return len(self._entries) - self._offset

    def reset(self, start: int) -> None:
        """Empty the tail; the next entry it can take is `start`."""
        self._entries = []
        self._tags = []
        self._offset = 0
        self._start = start
        self.size_bytes = 0

    def get(self, index: int) -> Entry | None:
        if self._start <= index < self.end:
            return self._entries[self._offset + index - self._start]
        return None

    def tags_of(self, index: int) -> tuple[str, ...]:
        return self._tags[self._offset + index - self._start]

    def window(self, low: int, high: int) -> tuple[list[Entry], list[tuple[str, ...]]]:
        """(entries, their tags) for cached indices in [low, high), as parallel lists."""
        low = max(low, self._start)
        high = min(high, self.end)
        if high <= low:  # also keeps negative positions out of the slices below
            return [], []
        base = self._offset - self._start
        return self._entries[base + low : base + high], self._tags[base + low : base + high]

    def scan(self, low: int, high: int) -> Iterator[tuple[Entry, tuple[str, ...]]]:
        """(entry, tags) for cached indices in [low, high), in order."""
        low = max(low, self._start)
        high = min(high, self.end)
        base = self._offset - self._start
        for position in range(base + low, base + high):
            yield self._entries[position], self._tags[position]

    def append(self, entries: list[Entry], tags: list[tuple[str, ...]]) -> None:
        """Add entries that start at `end`, or replace a suffix, or jump past a gap."""
        if not entries:
            return
        first = entries[0].index
        if first < self.end:
            self.truncate_from(first)
        if first != self.end:  # below start after a truncation, or past a snapshot
            self.reset(first)
        self._entries.extend(entries)
        self._tags.extend(tags)
        self.size_bytes += sum(entry_cost_bytes(entry) for entry in entries)
        self.evict()

    def truncate_from(self, index: int) -> None:
        """Drop entries at `index` and above."""
        if index <= self._start:
            self.reset(index)
            return
        if index >= self.end:
            return
        cut = self._offset + index - self._start
        self.size_bytes -= sum(entry_cost_bytes(entry) for entry in self._entries[cut:])
        del self._entries[cut:]
        del self._tags[cut:]

    def compact_through(self, index: int) -> None:
        """Drop entries at `index` and below (a compaction or snapshot)."""
        if index >= self.end - 1:
            self.reset(max(index + 1, self.end))
            return
        while self._start <= index:
            self._drop_first()
        self._maybe_compact_lists()

    def evict(self) -> None:
        """Drop the oldest entries until the tail fits its budget."""
        while self.size_bytes > self.budget_bytes and len(self) > 0:
            self._drop_first()
        if len(self) == 0:
            self.reset(self.end)
        self._maybe_compact_lists()

    def _drop_first(self) -> None:
        entry = self._entries[self._offset]
        self._entries[self._offset] = _EVICTED
        self._tags[self._offset] = NO_TAGS
        self._offset += 1
        self._start += 1
        self.size_bytes -= entry_cost_bytes(entry)

    def _maybe_compact_lists(self) -> None:
        if self._offset > _COMPACT_SLACK_MIN and self._offset * 2 > len(self._entries):
            del self._entries[: self._offset]
            del self._tags[: self._offset]
            self._offset = 0


_EVICTED = Entry(index=0, term=0, type=0, data=b"")
