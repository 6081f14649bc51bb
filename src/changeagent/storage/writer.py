"""One group commit: many write batches, one transaction, one fsync.

`GroupTransaction` runs on the writer thread only. It applies batches in
order inside one `BEGIN IMMEDIATE` transaction, tracking the log state as it
changes, and records what the in-memory tail must do once (and only once) the
transaction has committed. A batch that does not fit the log (a programmer
error) is rejected with ValueError before it changes anything, and the others
still commit.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from changeagent.raft.entry import Entry, HardState
from changeagent.raft.interfaces import Snapshot
from changeagent.storage.batch import WriteBatch
from changeagent.storage.records import (
    derive_fields,
    encode_hard_state,
    encode_snapshot,
    entry_crc,
    seal_meta,
)
from changeagent.storage.schema import META_HARD_STATE, META_SNAPSHOT
from changeagent.storage.tail import NO_TAGS, TailRecord, make_record

_INSERT_ENTRIES = "INSERT INTO entries (idx, term, type, ts, crc, key, body) VALUES "
_INSERT_TAGS = "INSERT OR IGNORE INTO tags (tag, idx) VALUES "
_INSERT_KEYS = "INSERT OR IGNORE INTO idempotency (key, idx) VALUES "
# Rows go in as multi-row INSERTs of power-of-two sizes (a handful of cached
# statements). Each statement is one sqlite3_step, i.e. one release of the GIL:
# with executemany, every row released and re-took the GIL, and re-taking it
# from a busy event-loop thread can cost a whole switch interval (5 ms).
_ROWS_PER_INSERT_MAX = 256
_UPSERT_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
_DELETE_FROM = (
    "DELETE FROM entries WHERE idx >= ?",
    "DELETE FROM tags WHERE idx >= ?",
    "DELETE FROM idempotency WHERE idx >= ?",
)
_DELETE_THROUGH = (
    "DELETE FROM entries WHERE idx <= ?",
    "DELETE FROM tags WHERE idx <= ?",
    "DELETE FROM idempotency WHERE idx <= ?",
)
# The unary plus keeps SQLite from using the type index for this scan: the
# first user entry is almost always at the head of the log.
_FIRST_USER_INDEX = "SELECT idx FROM entries WHERE +type >= 0 ORDER BY idx LIMIT 1"
_TERM_AT = "SELECT term FROM entries WHERE idx = ?"



@dataclass(frozen=True, slots=True)
class LogState:
    """What readers see of the log, published as a whole after each commit."""

    snapshot: Snapshot
    last_index: int
    hard_state: HardState
    first_user_index: int  # 0 when no user change is retained
    meta: dict[str, bytes]  # node metadata; replaced, never mutated, once published


@dataclass(frozen=True, slots=True)
class TailAppend:
    first_index: int
    records: list[TailRecord]


@dataclass(frozen=True, slots=True)
class TailTruncate:
    index: int  # drop index and above


@dataclass(frozen=True, slots=True)
class TailCompact:
    index: int  # drop index and below


TailOp = TailAppend | TailTruncate | TailCompact


@dataclass(slots=True)
class _Rows:
    """Rows waiting for one executemany each, flushed before any delete."""

    entries: list[tuple[int, int, int, int, int, str, bytes]] = field(default_factory=list)
    tags: list[tuple[str, int]] = field(default_factory=list)
    keys: list[tuple[str, int]] = field(default_factory=list)


class BatchRejected(ValueError):
    """A batch that does not fit the log; nothing of it was written."""


class GroupTransaction:
    """Applies batches to `connection` inside one transaction. Writer thread only."""

    def __init__(self, connection: sqlite3.Connection, state: LogState) -> None:
        self._connection = connection
        self.state = state
        self.tail_ops: list[TailOp] = []
        self.removed = False  # whether any entry was deleted (readers must be fenced)
        self.truncated = False  # whether a suffix was deleted (entries may be rewritten)
        self.discarded = False  # whether the whole log was discarded
        self.entries_written = 0  # entries appended by this transaction's batches
        self.commit_started = False  # a failure from here on may leave it written
        self._rows = _Rows()
        connection.execute("BEGIN IMMEDIATE")

    # Public steps ------------------------------------------------------------

    def apply(self, batch: WriteBatch) -> None:
        """Apply one batch, or raise ValueError having changed nothing."""
        self._check(batch)
        if batch.discard_log:
            self._discard_log()
        if batch.snapshot is not None and batch.compact_to is None:
            self._install_snapshot(batch.snapshot)
        if batch.entries:
            self._append(list(batch.entries))
            self.entries_written += len(batch.entries)
        if batch.hard_state is not None:
            self._write_hard_state(batch.hard_state)
        if batch.meta:
            self._write_meta(batch.meta)
        if batch.compact_to is not None:
            self._compact(batch)

    def prepare_commit(self) -> None:
        """Flush pending rows and settle derived state; COMMIT comes next."""
        self._flush_rows()
        if self.removed:
            row = self._connection.execute(_FIRST_USER_INDEX).fetchone()
            self.state = replace(self.state, first_user_index=0 if row is None else row[0])

    def commit(self) -> None:
        self.commit_started = True
        self._connection.execute("COMMIT")

    def rollback(self) -> None:
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")

    # Validation ----------------------------------------------------------------

    def _check(self, batch: WriteBatch) -> None:
        snapshot_index = self.state.snapshot.index
        last_index = self.state.last_index
        if batch.discard_log:
            snapshot_index = last_index = 0
        if batch.seed is not None:
            raise BatchRejected("a seed replaces the database: the writer installs it alone")
        installing = batch.snapshot is not None and batch.compact_to is None
        if installing:
            assert batch.snapshot is not None
            if batch.snapshot.index < snapshot_index:
                raise BatchRejected(
                    f"snapshot {batch.snapshot.index} is older than the current one "
                    f"({snapshot_index})"
                )
            if self._keeps_suffix(batch.snapshot):
                snapshot_index = batch.snapshot.index
            else:
                snapshot_index = last_index = batch.snapshot.index
        if batch.entries:
            first = batch.entries[0].index
            if first <= snapshot_index:
                raise BatchRejected(
                    f"entry {first} is at or below the compaction point {snapshot_index}"
                )
            if first > last_index + 1:
                raise BatchRejected(f"entry {first} leaves a gap after last index {last_index}")
            last_index = batch.entries[-1].index
        if batch.compact_to is not None:
            self._check_compaction(batch, snapshot_index, last_index)

    def _check_compaction(self, batch: WriteBatch, snapshot_index: int, last_index: int) -> None:
        index = batch.compact_to
        assert index is not None
        if index < snapshot_index or index > last_index:
            raise BatchRejected(
                f"compact_to {index} is outside the log ({snapshot_index}, {last_index}]"
            )
        if batch.snapshot is not None and index > snapshot_index:
            term = self._term_after(batch, index)
            if term != batch.snapshot.term:
                raise BatchRejected(
                    f"snapshot term {batch.snapshot.term} != term {term} of entry {index}"
                )

    def _keeps_suffix(self, snapshot: Snapshot) -> bool:
        """Whether the log holds the snapshot's last entry (so entries after it stay)."""
        if snapshot.index == self.state.snapshot.index:
            return snapshot.term == self.state.snapshot.term
        if snapshot.index > self.state.last_index:
            return False
        return self._stored_term(snapshot.index) == snapshot.term

    def _term_after(self, batch: WriteBatch, index: int) -> int:
        """The term at `index` once `batch`'s own entries are in place."""
        entries = batch.entries
        if entries and entries[0].index <= index:
            return entries[index - entries[0].index].term
        if index == self.state.snapshot.index:
            return self.state.snapshot.term
        return self._stored_term(index)

    def _stored_term(self, index: int) -> int:
        self._flush_rows()
        row = self._connection.execute(_TERM_AT, (index,)).fetchone()
        if row is None:
            raise BatchRejected(f"entry {index} is not stored")
        return int(row[0])

    # Mutations -------------------------------------------------------------------

    def _discard_log(self) -> None:
        self.discarded = True
        self._delete(_DELETE_FROM, 0)
        self.tail_ops.append(TailTruncate(0))
        self.tail_ops.append(TailCompact(0))  # the tail's next entry is 1
        self._write_snapshot(Snapshot(), 0)

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        if self._keeps_suffix(snapshot):
            self._delete(_DELETE_THROUGH, snapshot.index)
            self.tail_ops.append(TailCompact(snapshot.index))
            last_index = max(self.state.last_index, snapshot.index)
        else:
            self._delete(_DELETE_FROM, 0)
            self.tail_ops.append(TailTruncate(0))
            self.tail_ops.append(TailCompact(snapshot.index))
            last_index = snapshot.index
        self._write_snapshot(snapshot, last_index)

    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        if first <= self.state.last_index:
            self._delete(_DELETE_FROM, first)
            self.tail_ops.append(TailTruncate(first))
        rows = self._rows
        records: list[TailRecord] = []
        first_user_index = self.state.first_user_index
        for entry in entries:
            ts, tags = 0, NO_TAGS
            if entry.type >= 0:
                fields = derive_fields(entry.data)
                ts, tags = fields.ts, fields.tags
                rows.tags.extend((tag, entry.index) for tag in tags)
                if first_user_index == 0:
                    first_user_index = entry.index
            crc = entry_crc(entry.index, entry.term, entry.type, entry.key, entry.data)
            rows.entries.append(
                (entry.index, entry.term, entry.type, ts, crc, entry.key, entry.data)
            )
            if entry.key:
                rows.keys.append((entry.key, entry.index))
            records.append(make_record(entry, tags))
        self.tail_ops.append(TailAppend(first, records))
        self.state = replace(
            self.state, last_index=entries[-1].index, first_user_index=first_user_index
        )

    def _write_hard_state(self, hard_state: HardState) -> None:
        sealed = seal_meta(META_HARD_STATE, encode_hard_state(hard_state))
        self._connection.execute(_UPSERT_META, (META_HARD_STATE, sealed))
        self.state = replace(self.state, hard_state=hard_state)

    def _write_meta(self, meta: Mapping[str, bytes]) -> None:
        items = list(meta.items())
        self._connection.executemany(
            _UPSERT_META, [(key, seal_meta(key, bytes(value))) for key, value in items]
        )
        merged = dict(self.state.meta)
        merged.update((key, bytes(value)) for key, value in items)
        self.state = replace(self.state, meta=merged)

    def _compact(self, batch: WriteBatch) -> None:
        index = batch.compact_to
        assert index is not None
        previous = self.state.snapshot
        if index == previous.index:
            return
        snapshot = batch.snapshot
        if snapshot is None:
            snapshot = Snapshot(
                index=index,
                term=self._term_after(WriteBatch(), index),
                membership=batch.compact_membership or previous.membership,
                data=previous.data if batch.compact_data is None else batch.compact_data,
            )
        self._delete(_DELETE_THROUGH, index)
        self.tail_ops.append(TailCompact(index))
        self._write_snapshot(snapshot, self.state.last_index)

    def _write_snapshot(self, snapshot: Snapshot, last_index: int) -> None:
        self._connection.execute(
            _UPSERT_META, (META_SNAPSHOT, seal_meta(META_SNAPSHOT, encode_snapshot(snapshot)))
        )
        self.state = replace(self.state, snapshot=snapshot, last_index=last_index)

    def _delete(self, statements: tuple[str, str, str], index: int) -> None:
        self._flush_rows()
        for statement in statements:
            self._connection.execute(statement, (index,))
        self.removed = True
        self.truncated = self.truncated or statements is _DELETE_FROM

    def _flush_rows(self) -> None:
        rows = self._rows
        if rows.entries:
            _insert_rows(self._connection, _INSERT_ENTRIES, 7, rows.entries)
            rows.entries.clear()
        if rows.tags:
            _insert_rows(self._connection, _INSERT_TAGS, 2, rows.tags)
            rows.tags.clear()
        if rows.keys:
            _insert_rows(self._connection, _INSERT_KEYS, 2, rows.keys)
            rows.keys.clear()


def _insert_rows(
    connection: sqlite3.Connection,
    insert: str,
    columns: int,
    rows: Sequence[tuple[object, ...]],
) -> None:
    """Insert `rows` with as few statements as possible (see _ROWS_PER_INSERT_MAX)."""
    position = 0
    while position < len(rows):
        remaining = len(rows) - position
        count = min(_ROWS_PER_INSERT_MAX, 1 << (remaining.bit_length() - 1))
        chunk = rows[position : position + count]
        connection.execute(
            _multi_row_statement(insert, columns, count),
            tuple(itertools.chain.from_iterable(chunk)),
        )
        position += count


@functools.cache
def _multi_row_statement(insert: str, columns: int, count: int) -> str:
    row = "(" + ",".join("?" * columns) + ")"
    return insert + ",".join([row] * count)
