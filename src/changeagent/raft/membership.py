"""MembershipLog: the membership in force at every index of the log.

§4.1: a server uses the latest configuration in its log, committed or not, so the
membership changes when an entry is appended and reverts when it is truncated.
We keep the membership at the compaction point plus one record per membership
entry after it (few: changes are rare), which answers "membership at index i"
for snapshots and lets a truncation undo changes.
"""

from __future__ import annotations

from changeagent.raft.confchange import ConfChange
from changeagent.raft.entry import ENTRY_TYPE_MEMBERSHIP, Entry
from changeagent.raft.errors import InvariantViolation
from changeagent.raft.interfaces import LogReader, Membership


class MembershipLog:
    """Membership at the compaction point, then after each membership entry."""

    __slots__ = ("_base", "_base_index", "_changes", "current")

    def __init__(self, base: Membership, base_index: int) -> None:
        self._base = base
        self._base_index = base_index
        self._changes: list[tuple[int, Membership]] = []  # ascending entry index
        self.current = base

    def latest_index(self) -> int:
        """Index of the entry that set the current membership (or the compaction point)."""
        return self._changes[-1][0] if self._changes else self._base_index

    def at(self, index: int) -> Membership:
        membership = self._base
        for entry_index, entry_membership in self._changes:
            if entry_index > index:
                break
            membership = entry_membership
        return membership

    def record(self, entries: list[Entry] | tuple[Entry, ...]) -> bool:
        """Apply the membership entries among `entries`; return whether any was found."""
        changed = False
        for entry in entries:
            if entry.type == ENTRY_TYPE_MEMBERSHIP:
                try:
                    change = ConfChange.decode(entry.data)
                except ValueError as error:
                    raise InvariantViolation(
                        f"bad membership entry at {entry.index}: {error}"
                    ) from None
                self.current = change.apply(self.current)
                self._changes.append((entry.index, self.current))
                changed = True
        return changed

    def truncate_from(self, index: int) -> bool:
        """Forget changes at `index` and after (their entries were overwritten)."""
        changed = False
        while self._changes and self._changes[-1][0] >= index:
            self._changes.pop()
            changed = True
        if changed:
            self.current = self._changes[-1][1] if self._changes else self._base
        return changed

    def reset(self, base: Membership, base_index: int) -> None:
        """A snapshot replaced the log."""
        self._base, self._base_index, self._changes, self.current = base, base_index, [], base

    def compact(self, index: int) -> None:
        """Fold changes up to `index` into the base (the prefix was discarded)."""
        while self._changes and self._changes[0][0] <= index:
            self._base = self._changes.pop(0)[1]
        self._base_index = max(self._base_index, index)

    def recover(self, reader: LogReader) -> None:
        """Find the membership entries in the durable log (once, at start-up)."""
        self.record(reader.internal_entries(reader.first_index(), reader.last_index() + 1))
