"""An in-memory durable log for one simulated node, with a crash-lossy write buffer.

The simulator models a disk as two layers. `stage()` is the `write()` system call:
the Ready's hard state, snapshot and entries land in an unsynced buffer that a
crash throws away. `sync()` is the `fsync()` that completes later, at a moment the
simulator picks: only then does the buffer become durable, and only the durable
part is visible through the `LogReader` protocol that the core reads from (its
docstring promises "the last durable entry"). A restart rebuilds the core from
`restart_hard_state()` and this reader alone.

`note_commit()` is production's `commit-index` file: a commit index written
without an fsync, which survives a crash of the process (the page cache keeps
it) but is not part of any staged write. A restart uses the higher of it and
the durable hard state's commit index, as `changeagent.storage` does.

The full view (`view_term`, `view_entry`) adds the staged buffer on top of the
durable part; the checkers use it to see a leader's log as the leader sees it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from changeagent.raft.entry import Entry, HardState
from changeagent.raft.interfaces import Compacted, Snapshot, Unavailable


class LogCorruption(Exception):
    """The simulator (or the core through it) asked the log to do something impossible.

    This is a programmer error in the core or the simulator, never a fault the
    simulator injects, so it is raised and ends the run.
    """


@dataclass(slots=True)
class StagedWrite:
    """One Ready's worth of writes that have not been synced yet."""

    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: list[Entry]
    # The node's durable "removed by a snapshot" mark (production: storage meta
    # written with the snapshot): True sets it, False clears it, None leaves it.
    removed_mark: bool | None = None


class SimLog:
    """Implements `changeagent.raft.interfaces.LogReader` over Python lists.

    Invariants: `_entries[k].index == _snapshot.index + 1 + k`; entry terms never
    decrease along the list; at most one staged write is pending, because the
    simulator does not ask the core for a new Ready until the previous one is
    synced and advanced.
    """

    __slots__ = ("_entries", "_hard_state", "_noted_commit", "_snapshot", "_staged", "removed_mark")

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self._snapshot = snapshot if snapshot is not None else Snapshot()
        self._entries: list[Entry] = []
        self._hard_state = HardState(term=self._snapshot.term, vote=0, commit=self._snapshot.index)
        self._staged: StagedWrite | None = None
        self.removed_mark = False  # durable: see StagedWrite.removed_mark
        self._noted_commit = 0

    # ---- LogReader (durable part only) ----

    def first_index(self) -> int:
        return self._snapshot.index + 1

    def last_index(self) -> int:
        return self._snapshot.index + len(self._entries)

    def term(self, index: int) -> int:
        if index == 0:
            return 0
        if index == self._snapshot.index:
            return self._snapshot.term
        if index < self._snapshot.index:
            raise Compacted(index)
        if index > self.last_index():
            raise Unavailable(index)
        return self._entries[index - self._snapshot.index - 1].term

    def entries(self, low: int, high: int, max_bytes: int) -> list[Entry]:
        if low < self.first_index():
            raise Compacted(low)
        if high > self.last_index() + 1:
            raise Unavailable(high)
        if low >= high:
            return []
        offset = self._snapshot.index + 1
        selected = self._entries[low - offset : high - offset]
        total_bytes = len(selected[0].data)
        for count, entry in enumerate(selected[1:], start=1):
            total_bytes += len(entry.data)
            if total_bytes > max_bytes:
                return selected[:count]
        return selected

    def internal_entries(self, low: int, high: int) -> list[Entry]:
        offset = self._snapshot.index + 1
        selected = self._entries[max(0, low - offset) : high - offset]
        return [entry for entry in selected if entry.type < 0]

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # ---- durable state for restarts and checkers ----

    def durable_hard_state(self) -> HardState:
        return self._hard_state

    def restart_hard_state(self) -> HardState:
        """What a restarted process reads: the durable hard state, its commit index
        raised to the noted one (never beyond the last entry), as the storage does."""
        noted = min(self._noted_commit, self.last_index())
        if noted <= self._hard_state.commit:
            return self._hard_state
        return replace(self._hard_state, commit=noted)

    def note_commit(self, index: int) -> None:
        """Remember a higher commit index without an fsync (lost only on power loss,
        which the simulator does not model: its crashes are process crashes)."""
        self._noted_commit = max(self._noted_commit, index)

    def durable_entries(self) -> list[Entry]:
        """A copy of the durable entries after the snapshot."""
        return list(self._entries)

    def entry_at(self, index: int) -> Entry:
        """The durable entry at `index` (raises like `term()` when outside the log)."""
        self.term(index)
        if index <= self._snapshot.index:
            raise Compacted(index)
        return self._entries[index - self._snapshot.index - 1]

    # ---- write path: stage (write) then sync (fsync) ----

    @property
    def has_staged(self) -> bool:
        return self._staged is not None

    def stage(
        self,
        hard_state: HardState | None,
        snapshot: Snapshot | None,
        entries: list[Entry],
        removed_mark: bool | None = None,
    ) -> None:
        """Record a write that a crash before `sync()` loses."""
        if self._staged is not None:
            raise LogCorruption("a second write was staged before the first was synced")
        for previous, entry in itertools.pairwise(entries):
            if entry.index != previous.index + 1:
                raise LogCorruption(f"entries to persist are not contiguous at {entry.index}")
        self._staged = StagedWrite(hard_state, snapshot, list(entries), removed_mark)

    def sync(self) -> StagedWrite | None:
        """Make the staged write durable; return it (None when nothing was staged)."""
        staged = self._staged
        if staged is None:
            return None
        self._staged = None
        if staged.snapshot is not None and staged.snapshot.index > 0:
            self._install_snapshot(staged.snapshot)
        if staged.entries:
            self._append(staged.entries)
        if staged.hard_state is not None:
            self._hard_state = staged.hard_state
        if staged.removed_mark is not None:
            self.removed_mark = staged.removed_mark
        return staged

    def crash(self) -> None:
        """Lose whatever was written but not synced."""
        self._staged = None

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        # Ready's contract: discard every entry at or below the snapshot index, and
        # the whole log if it does not contain the snapshot's last entry.
        if snapshot.index < self._snapshot.index:
            raise LogCorruption(
                f"snapshot at {snapshot.index} is older than the log's at {self._snapshot.index}"
            )
        self._entries = _suffix_after_snapshot(self._snapshot, self._entries, snapshot)
        self._snapshot = snapshot

    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first <= self._snapshot.index:
            raise LogCorruption(f"append at {first} inside the compacted prefix")
        if first > self.last_index() + 1:
            raise LogCorruption(f"append at {first} leaves a gap after {self.last_index()}")
        # The caller truncates the conflicting suffix first (Ready's contract).
        del self._entries[first - self._snapshot.index - 1 :]
        previous_term = self.term(first - 1)
        if entries[0].term < previous_term:
            raise LogCorruption(f"entry {first} has a term lower than its predecessor")
        self._entries.extend(entries)

    def compact(self, snapshot: Snapshot) -> None:
        """Discard the durable prefix up to `snapshot.index` (purge / log compaction)."""
        if snapshot.index <= self._snapshot.index:
            return
        if snapshot.index > self.last_index():
            raise LogCorruption(f"compaction to {snapshot.index} beyond {self.last_index()}")
        if self.term(snapshot.index) != snapshot.term:
            raise LogCorruption(f"compaction snapshot term mismatch at {snapshot.index}")
        del self._entries[: snapshot.index - self._snapshot.index]
        self._snapshot = snapshot

    # ---- full view: durable plus staged, as the node itself sees its log ----

    def _view(self) -> tuple[Snapshot, list[Entry]]:
        """The log as it will be after `sync()` (the durable log when nothing is staged)."""
        staged = self._staged
        if staged is None:
            return self._snapshot, self._entries
        snapshot, entries = self._snapshot, self._entries
        if staged.snapshot is not None and staged.snapshot.index > 0:
            entries = _suffix_after_snapshot(snapshot, entries, staged.snapshot)
            snapshot = staged.snapshot
        if staged.entries:
            keep = staged.entries[0].index - snapshot.index - 1
            entries = entries[: max(keep, 0)] + staged.entries
        return snapshot, entries

    def view_snapshot(self) -> Snapshot:
        return self._view()[0]

    def view_last_index(self) -> int:
        snapshot, entries = self._view()
        return snapshot.index + len(entries)

    def view_entry(self, index: int) -> Entry | None:
        """The entry at `index` in the full view, or None when absent or compacted."""
        staged = self._staged
        if staged is not None and staged.entries and staged.snapshot is None:
            # Fast path: the common Ready carries entries and no snapshot.
            first = staged.entries[0].index
            if index >= first:
                offset = index - first
                return staged.entries[offset] if offset < len(staged.entries) else None
            staged = None
        if staged is None:
            snapshot, entries = self._snapshot, self._entries
        else:
            snapshot, entries = self._view()
        offset = index - snapshot.index - 1
        if 0 <= offset < len(entries):
            return entries[offset]
        return None

    def view_term(self, index: int) -> int | None:
        """Term at `index` in the full view; the snapshot term at its index; None if unknown."""
        if index == 0:
            return 0
        entry = self.view_entry(index)
        if entry is not None:
            return entry.term
        snapshot = self.view_snapshot()
        return snapshot.term if index == snapshot.index else None


def _suffix_after_snapshot(old: Snapshot, entries: list[Entry], new: Snapshot) -> list[Entry]:
    """Entries that survive installing `new` over a log of `old` plus `entries`."""
    offset = new.index - old.index - 1
    if offset == -1:
        return entries if new.term == old.term else []
    if 0 <= offset < len(entries) and entries[offset].term == new.term:
        return entries[offset + 1 :]
    return []
