"""RaftLog: the durable log (through a LogReader) plus the unstable tail in memory.

Entries the core has accepted but the node has not yet persisted live in
`unstable` (starting at index `offset`); a snapshot received from the leader
but not yet installed lives in `pending_snapshot`. Reads look at those first,
then at the durable log. `advance()` moves what the node persisted out of here.
"""

from __future__ import annotations

from changeagent.raft.entry import Entry
from changeagent.raft.errors import InvariantViolation
from changeagent.raft.interfaces import Compacted, LogReader, Snapshot, Unavailable


class RaftLog:
    """The log as the core sees it. Invariant: applied <= commit <= last_index()."""

    __slots__ = ("applied", "commit", "offset", "pending_snapshot", "reader", "unstable")

    def __init__(self, reader: LogReader, commit: int, applied: int) -> None:
        self.reader = reader
        self.unstable: list[Entry] = []
        self.offset = reader.last_index() + 1  # index of unstable[0]
        self.pending_snapshot: Snapshot | None = None
        self.commit = commit
        self.applied = applied

    # --- reading ------------------------------------------------------------

    def last_index(self) -> int:
        if self.unstable:
            return self.offset + len(self.unstable) - 1
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index
        return self.reader.last_index()

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index + 1
        return self.reader.first_index()

    def durable_last_index(self) -> int:
        """The last index the node has persisted and that still matches this log."""
        if self.unstable:
            return self.offset - 1
        if self.pending_snapshot is not None:
            return 0
        return self.reader.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term at `index`; raises Compacted / Unavailable like `LogReader.term`."""
        if index >= self.offset and self.unstable:
            position = index - self.offset
            if position < len(self.unstable):
                return self.unstable[position].term
            raise Unavailable(index)
        snapshot = self.pending_snapshot
        if snapshot is not None:
            if index == snapshot.index:
                return snapshot.term
            if index < snapshot.index:
                raise Compacted(index)
            raise Unavailable(index)
        return self.reader.term(index)

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (Compacted, Unavailable):
            return False

    def is_up_to_date(self, last_term: int, last_index: int) -> bool:
        """§5.4.1: a candidate's log is at least as up to date as ours."""
        our_last = self.last_index()
        our_term = self.term(our_last)
        return last_term > our_term or (last_term == our_term and last_index >= our_last)

    def slice(self, low: int, high: int, max_bytes: int) -> list[Entry]:
        """Entries in [low, high), at most about `max_bytes` (at least one)."""
        if low >= high:
            return []
        if self.pending_snapshot is not None and low <= self.pending_snapshot.index:
            raise Compacted(low)
        result: list[Entry] = []
        if low < self.offset or not self.unstable:
            stable_high = min(high, self.offset) if self.unstable else high
            result = self.reader.entries(low, stable_high, max_bytes)
            if result[-1].index < stable_high - 1 or stable_high == high:
                return result
            max_bytes -= sum(len(entry.data) for entry in result)
            if max_bytes <= 0:
                return result
            low = stable_high
        start = low - self.offset
        tail = self.unstable[start : high - self.offset]
        if sum(len(entry.data) for entry in tail) > max_bytes:
            tail = _limit_bytes(tail, max_bytes, keep_one=not result)
        return result + tail if result else tail

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or conflicts with ours; 0 if none."""
        last = self.last_index()
        for entry in entries:
            if entry.index > last:
                return entry.index
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= `index` whose term is <= `term` (fast backoff)."""
        while index > 0:
            try:
                if self.term(index) <= term:
                    return index
            except Compacted:
                return index
            except Unavailable:
                index = self.last_index()
                continue
            index -= 1
        return 0

    def next_committed(self, max_bytes: int) -> list[Entry]:
        low = max(self.applied + 1, self.first_index())
        if low > self.commit:
            return []
        return self.slice(low, self.commit + 1, max_bytes)

    def has_next_committed(self) -> bool:
        return self.commit > max(self.applied, self.first_index() - 1)

    # --- writing ------------------------------------------------------------

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Append entries; the first may overwrite (truncate) from its index on."""
        after = entries[0].index
        unstable = self.unstable
        if unstable and after == self.offset + len(unstable):
            unstable.extend(entries)
        elif not unstable or after <= self.offset:
            # Either a plain append after the durable log, or a conflict below the
            # unstable tail: the node truncates its durable suffix when persisting.
            self.unstable = list(entries)
            self.offset = after
        else:
            del unstable[after - self.offset :]
            unstable.extend(entries)

    def commit_to(self, index: int) -> None:
        if index > self.commit:
            if index > self.last_index():
                raise InvariantViolation(f"commit {index} beyond last index {self.last_index()}")
            self.commit = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log with `snapshot` (installed by the node at the next Ready)."""
        self.pending_snapshot = snapshot
        self.unstable = []
        self.offset = snapshot.index + 1
        self.commit = snapshot.index

    def stable_to(self, index: int, term: int) -> None:
        """The node persisted entries up to (index, term): drop them from unstable."""
        position = index - self.offset
        if 0 <= position < len(self.unstable) and self.unstable[position].term == term:
            del self.unstable[: position + 1]
            self.offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.index == index:
            self.pending_snapshot = None
        self.applied = max(self.applied, index)


def _limit_bytes(entries: list[Entry], max_bytes: int, *, keep_one: bool) -> list[Entry]:
    total = 0
    for position, entry in enumerate(entries):
        total += len(entry.data)
        if total > max_bytes:
            return entries[: max(position, 1 if keep_one else 0)]
    return entries
