"""`Storage`: the durable Raft log and change list on SQLite, with a hot tail."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from changeagent.raft.entry import Entry, HardState
from changeagent.raft.interfaces import Compacted, Snapshot, Unavailable
from changeagent.storage import reads, schema
from changeagent.storage.batch import WriteBatch
from changeagent.storage.commit_hint import CommitHint
from changeagent.storage.errors import (
    CorruptionError,
    StorageBusy,
    StorageClosed,
    StorageError,
    StorageFailed,
)
from changeagent.storage.opening import load_state, lock_directory, warm_tail
from changeagent.storage.purge import PurgeScanner
from changeagent.storage.reads import RowMissing
from changeagent.storage.seed import prepare_seed
from changeagent.storage.tail import DATA, TAGS, TERM, TYPE, TailCache, TailRecord, record_entry
from changeagent.storage.write_queue import (
    HandOver,
    Outcome,
    Queued,
    WriteQueue,
    fresh_error,
    settle,
)
from changeagent.storage.writer import (
    BatchRejected,
    GroupTransaction,
    LogState,
    TailAppend,
    TailCompact,
    TailOp,
    TailTruncate,
)

T = TypeVar("T")
FaultInjector = Callable[[int], None]
# Called on the writer thread after each committed transaction with the seconds its
# COMMIT took (the WAL write and its fsync) and the entries it wrote.
CommitObserver = Callable[[float, int], None]

# The hot tail of recent changes kept in memory. 16 MiB holds ~100,000 typical
# changes (enough for every consumer near the tail) and keeps a node with a
# million stored changes within ~30 MB of an empty one.
TAIL_CACHE_BYTES_DEFAULT = 16 * 1024 * 1024
TAIL_WARM_BYTES_DEFAULT = 4 * 1024 * 1024
TAIL_SCAN_ENTRIES_MAX = 256
QUEUE_BATCHES_MAX = 8192
GROUP_BATCHES_MAX = 1024
GROUP_BYTES_MAX = 32 * 1024 * 1024
# `Storage._write_now`: a batch of at most this many entries, after a transaction of
# at most as many, is written on the caller's thread when the writer thread is idle,
WRITE_NOW_ENTRIES_MAX = 1
# unless that transaction's COMMIT took longer than this: the loop never waits for a slow disk.
WRITE_NOW_COMMIT_S_MAX = 0.002
# Nor a batch larger than this: its copy, checksum and fsync would hold up the loop
# (a 1 MiB change ~4 ms on this project's machine, 20 MiB ~150 ms: no heartbeat, no
# read meanwhile) for a hand-off that saves ~0.12 ms.
WRITE_NOW_BYTES_MAX = 64 * 1024

Outcomes = list[tuple[Queued, Outcome]]
_AT_START_TAIL_PROBE = 64  # tail entries at or below `since` checked before asking SQLite


@dataclass(frozen=True, slots=True)
class ChangePage:
    """One page of user changes, as their stored JSON bytes.

    `first_retained` is the first retained user change's index (0 if none) and
    `compacted_through` the compaction point: a consumer whose `since` is below
    `compacted_through` may have missed purged changes.
    """

    bodies: list[bytes]
    last_index: int  # index of the last returned change, or `since` if none
    at_start: bool  # no retained matching change at or below `since`
    at_end: bool  # no matching committed change after the last one returned
    first_retained: int
    compacted_through: int


@dataclass(frozen=True, slots=True)
class KnownAtStart:
    """A page's `at_start` for a `since`, as an earlier read found it, so that a later
    read of the same filter need not look below `since` again (SQLite can take a scan).

    The earlier read must have covered `since` (the log then ended at or above it):
    later appends land above `since` and cannot change the answer. A compaction can
    only turn it from false to true, so it holds while `compacted_through` (the
    earlier page's) is still the compaction point, and forever when true.
    """

    value: bool
    compacted_through: int


@dataclass(frozen=True, slots=True)
class _TailScan:
    items: list[tuple[int, bytes]]
    resume_after: int | None  # where SQLite must continue, or None if the scan is complete


class Storage:
    """The durable log. Thread-safe: reads from any thread, writes via `submit`/`write`.

    Implements `changeagent.raft.interfaces.LogReader`.
    """

    # Opening and closing ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        tail_cache_bytes: int = TAIL_CACHE_BYTES_DEFAULT,
        tail_warm_bytes: int = TAIL_WARM_BYTES_DEFAULT,
        queue_batches_max: int = QUEUE_BATCHES_MAX,
        group_batches_max: int = GROUP_BATCHES_MAX,
        group_bytes_max: int = GROUP_BYTES_MAX,
        fault_injector: FaultInjector | None = None,
        sqlite_pragmas: Mapping[str, int | str] | None = None,
        tail_scan_entries_max: int = TAIL_SCAN_ENTRIES_MAX,
    ) -> Storage:
        """Open (creating if needed) the storage in `data_dir` and start its writer.

        `fault_injector(commit_number)` is called before every COMMIT; if it
        raises, that commit fails as a disk error would (for tests).
        `sqlite_pragmas` are applied to the writing connection after the
        defaults (e.g. `max_page_count` to provoke a real SQLITE_FULL).
        A filtered read scans at most `tail_scan_entries_max` tail entries
        before SQLite's indexes take over.
        """
        for name, value in (
            ("tail_cache_bytes", tail_cache_bytes),
            ("tail_warm_bytes", tail_warm_bytes),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name, value in (
            ("queue_batches_max", queue_batches_max),
            ("group_batches_max", group_batches_max),
            ("group_bytes_max", group_bytes_max),
            ("tail_scan_entries_max", tail_scan_entries_max),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        data_dir = Path(data_dir)
        schema.prepare_directory(data_dir)
        lock_fd = lock_directory(data_dir)
        try:
            connection = schema.connect_writer(data_dir, sqlite_pragmas)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            schema.restrict_file_modes(data_dir)
            state = load_state(connection)
            tail = warm_tail(connection, state, tail_cache_bytes, tail_warm_bytes)
            commit_hint = CommitHint(data_dir)
        except BaseException:
            connection.close()
            os.close(lock_fd)
            raise
        noted = min(commit_hint.noted, state.last_index)
        if noted > state.hard_state.commit:
            state = replace(state, hard_state=replace(state.hard_state, commit=noted))
        storage = cls(
            data_dir=data_dir,
            connection=connection,
            lock_fd=lock_fd,
            state=state,
            tail=tail,
            limits=(queue_batches_max, group_batches_max, group_bytes_max),
            fault_injector=fault_injector,
            tail_scan_entries_max=tail_scan_entries_max,
            commit_hint=commit_hint,
        )
        storage._reopening = (sqlite_pragmas, tail_cache_bytes, tail_warm_bytes)
        return storage

    def __init__(
        self,
        *,
        data_dir: Path,
        connection: sqlite3.Connection,
        lock_fd: int,
        state: LogState,
        tail: TailCache,
        limits: tuple[int, int, int],
        fault_injector: FaultInjector | None,
        tail_scan_entries_max: int = TAIL_SCAN_ENTRIES_MAX,
        commit_hint: CommitHint,
    ) -> None:
        """Use `Storage.open`."""
        self._commit_hint = commit_hint
        self._tail_scan_entries_max = tail_scan_entries_max
        self.data_dir = data_dir
        self._connection = connection
        self._lock_fd = lock_fd
        self._fault_injector = fault_injector
        # Readers' view: `_state` and `_tail` change together, under `_lock`,
        # only after the transaction that made the change durable committed.
        self._lock = threading.Lock()
        self._state = state
        self._tail = tail
        # Seqlock fencing SQLite reads against removals (truncate, compact):
        # odd while a removing transaction commits and publishes.
        self._removal_lock = threading.Lock()
        self._removal_generation = 0
        self._truncations = 0  # suffix deletions published so far (see PurgeScanner)
        self._purge_scanner = PurgeScanner()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        # A seed replaces the database file (`_replace_with_seed`): it waits until no
        # read runs (`_reads_active`, under `_reads_idle`), and readers reconnect when
        # `_epoch` moved on.
        self._reads_idle = threading.Condition(threading.Lock())
        self._reads_active = 0
        self._epoch = 0
        self._reopening: tuple[Mapping[str, int | str] | None, int, int] = (
            None,
            TAIL_CACHE_BYTES_DEFAULT,
            TAIL_WARM_BYTES_DEFAULT,
        )
        self._writes = WriteQueue(*limits)  # also holds the failure, once there is one
        self._hand_over = HandOver()  # the event loop's writes only (`write`)
        self._closed = False
        self.commit_count = 0  # transactions committed (one fsync each)
        # What the last transaction appended and how long its COMMIT took (`_write_now`).
        self._last_group_entries = 0
        self._last_commit_s = 0.0
        self.batches_written = 0
        self.commit_observer: CommitObserver | None = None  # set before writes begin
        self._writer = threading.Thread(
            target=self._run_writer, name=f"storage-writer:{data_dir}", daemon=True
        )
        self._writer.start()

    def close(self) -> None:
        """Write every batch already submitted, stop the writer, close the files."""
        first_close = self._writes.close()
        self._writer.join()
        if not first_close:
            return
        with self._lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for connection in readers:
            connection.close()
        self._connection.close()
        self._commit_hint.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def failure(self) -> str | None:
        """Why the storage stopped (a failed write or corruption), or None."""
        failure = self._writes.failure
        return None if failure is None else str(failure)

    # LogReader -------------------------------------------------------------------

    def first_index(self) -> int:
        self._check_readable()
        return self._state.snapshot.index + 1

    def last_index(self) -> int:
        self._check_readable()
        return self._state.last_index

    def snapshot(self) -> Snapshot:
        self._check_readable()
        return self._state.snapshot

    def term(self, index: int) -> int:
        self._check_readable()
        if index == 0:
            return 0
        with self._lock:
            snapshot, last_index = self._state.snapshot, self._state.last_index
            _check_index(index, snapshot.index, last_index)
            if index == snapshot.index:
                return snapshot.term
            cached = self._tail.get(index)
        if cached is not None:
            return cached[TERM]
        return self._stable(lambda connection: self._stored_term(connection, index))

    def entries(self, low: int, high: int, max_bytes: int) -> list[Entry]:
        self._check_readable()
        with self._lock:
            state = self._state
            if low <= state.snapshot.index:
                raise _compacted(low, state.snapshot.index)
            if high > state.last_index + 1:
                raise Unavailable(f"entry {high - 1} is above last index {state.last_index}")
            if low >= high:
                return []
            if low >= self._tail.start:
                first, records = self._tail.window(low, high)
                return _limit_bytes(
                    (record_entry(first + offset, record) for offset, record in enumerate(records)),
                    max_bytes,
                )
        return self._stable(
            lambda connection: self._stored_entries(connection, low, high, max_bytes)
        )

    def internal_entries(self, low: int, high: int) -> list[Entry]:
        self._check_readable()
        return self._stable(lambda connection: reads.internal_between(connection, low, high))

    # Other state -----------------------------------------------------------------

    def note_commit(self, index: int) -> None:
        """Remember a higher commit index without an fsync (see `commit_hint`);
        `hard_state().commit` after a reopen is at least this (at most the last
        index). Call only with indices known to be committed and durable here."""
        if index > self._commit_hint.noted:
            self._commit_hint.note(index)

    def hard_state(self) -> HardState:
        self._check_readable()
        return self._state.hard_state

    def meta_get(self, key: str) -> bytes | None:
        """A node metadata value written through `WriteBatch.meta`."""
        self._check_readable()
        return self._state.meta.get(key)

    def meta_items(self) -> dict[str, bytes]:
        self._check_readable()
        return dict(self._state.meta)

    def first_user_index(self) -> int:
        """Index of the first retained user change, 0 if there is none."""
        self._check_readable()
        return self._state.first_user_index

    def stats(self) -> dict[str, int]:
        with self._lock:
            tail_entries, tail_bytes = len(self._tail), self._tail.size_bytes
        return {
            "commits": self.commit_count,
            "batches_written": self.batches_written,
            "queued_batches": len(self._writes),
            "tail_entries": tail_entries,
            "tail_bytes": tail_bytes,
            "first_index": self._state.snapshot.index + 1,
            "last_index": self._state.last_index,
        }

    # Change reads (HTTP API) -------------------------------------------------------

    def read_changes(
        self,
        since: int,
        limit: int,
        tags: Sequence[str] = (),
        type: int | None = None,  # the API's own name for the filter
        upto: int | None = None,
        at_start: KnownAtStart | None = None,
    ) -> ChangePage:
        """At most `limit` user changes with since < index <= upto matching the
        filter (any of `tags`, when given; `type`, when given), in index order.
        `upto` is the commit index (default: the last durable index). `at_start`,
        when given and still valid, is the page's atStart (no look below `since`)."""
        self._check_readable()
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        tag_filter = tuple(dict.fromkeys(tags))
        want = limit + 1  # one more than asked, to know whether the page is the end
        with self._lock:
            state = self._state
            upto_index = state.last_index if upto is None else min(upto, state.last_index)
            scan = self._tail_changes(since, want, tag_filter, type, upto_index)
        if scan is None:
            items = self._stable(
                lambda connection: reads.changes_after(
                    connection, since, want, tag_filter, type, upto_index
                )
            )
        elif scan.resume_after is None:
            items = scan.items
        else:  # the tail scan hit its budget: the indexed SQLite read does the rest
            resume_after, found = scan.resume_after, scan.items
            items = self._stable(
                lambda connection: self._resume_changes_after(
                    connection, since, resume_after, found, want, tag_filter, type, upto_index
                )
            )
        return self._page(
            state, since, limit, items, self._at_start(state, since, tag_filter, type, at_start)
        )

    def read_changes_in_memory(
        self,
        since: int,
        limit: int,
        tags: Sequence[str] = (),
        type: int | None = None,
        upto: int | None = None,
        at_start: KnownAtStart | None = None,
    ) -> ChangePage | None:
        """Like `read_changes`, but only when the hot tail alone can answer; else None.

        Cheap enough to run on the event loop, and bounded: it looks at no more than
        max(TAIL_SCAN_ENTRIES_MAX, limit + 1) tail entries after `since` and
        _AT_START_TAIL_PROBE at or below it, and never at SQLite. Consumers near the
        tail are answered without a thread hop; everyone else goes to `read_changes`
        in a worker.
        """
        self._check_readable()
        tag_filter = tuple(dict.fromkeys(tags))
        with self._lock:
            state = self._state
            upto_index = state.last_index if upto is None else min(upto, state.last_index)
            scan = self._tail_changes(since, limit + 1, tag_filter, type, upto_index)
        if scan is None or scan.resume_after is not None:
            return None
        known = self._at_start_in_memory(state, since, tag_filter, type, at_start)
        if known is None:
            return None
        return self._page(state, since, limit, scan.items, known)

    def has_changes_in_memory(
        self,
        after: int,
        upto: int,
        tags: Sequence[str] = (),
        type: int | None = None,
    ) -> bool | None:
        """Whether a user change in (after, upto] matches the filter, from the tail
        alone, looking at no more than TAIL_SCAN_ENTRIES_MAX entries; None when the
        tail does not hold them all (then `read_changes` can tell, in a worker).

        The per-commit check of a waiting long-poll: only the new entries are read.
        """
        self._check_readable()
        tag_filter = tuple(dict.fromkeys(tags))
        with self._lock:
            upto_index = min(upto, self._state.last_index)
            if after >= upto_index:
                return False
            scan = self._tail_changes(after, 1, tag_filter, type, upto_index)
        if scan is None:
            return None
        if scan.items:
            return True
        return None if scan.resume_after is not None else False

    def _page(
        self,
        state: LogState,
        since: int,
        limit: int,
        items: list[tuple[int, bytes]],
        at_start: bool,
    ) -> ChangePage:
        shown = items[:limit]
        return ChangePage(
            bodies=[body for _, body in shown],
            last_index=shown[-1][0] if shown else since,
            at_start=at_start,
            at_end=len(items) <= limit,
            first_retained=state.first_user_index,
            compacted_through=state.snapshot.index,
        )

    def _at_start_in_memory(
        self,
        state: LogState,
        since: int,
        tags: tuple[str, ...],
        entry_type: int | None,
        known: KnownAtStart | None,
    ) -> bool | None:
        """`_at_start` without SQLite (O(1), or a probe of _AT_START_TAIL_PROBE tail
        entries); None when only SQLite can tell."""
        if known is not None and (known.value or known.compacted_through == state.snapshot.index):
            return known.value
        first_user_index = state.first_user_index
        if first_user_index == 0 or first_user_index > since:
            return True  # no user change at all at or below `since`
        if not tags and entry_type is None:
            return False
        if self._tail_has_match_near(since, tags, entry_type):
            return False
        return None

    def get_change(self, index: int, upto: int | None = None) -> bytes | None:
        """The stored bytes of user change `index`; None if unknown, purged,
        internal, or above `upto` (the commit index; default the last index)."""
        self._check_readable()
        with self._lock:
            state = self._state
            last_index = state.last_index if upto is None else min(upto, state.last_index)
            if index <= state.snapshot.index or index > last_index:
                return None
            record = self._tail.get(index)
        if record is not None:
            return record[DATA] if record[TYPE] >= 0 else None
        entry = self._stable(lambda connection: self._stored_change(connection, index, upto))
        return None if entry is None or entry.type < 0 else entry.data

    def change_items(self, since: int, limit: int, upto: int) -> list[tuple[int, bytes]]:
        """At most `limit` user changes with since < index <= upto, as (index, stored
        bytes), from SQLite (worker threads only: the archive reads what a purge is
        about to remove, which is seldom in the tail)."""
        self._check_readable()
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return self._stable(
            lambda connection: reads.changes_after(connection, since, limit, (), None, upto)
        )

    def idempotency_lookup(self, key: str) -> int | None:
        """Index of the retained entry that carries idempotency key `key`, if any."""
        self._check_readable()
        return self._stable(lambda connection: reads.idempotency_index(connection, key))

    def count_user_changes_after(self, index: int) -> int:
        self._check_readable()
        return self._stable(lambda connection: reads.count_user_changes_after(connection, index))

    def purge_point(self, min_records: int, older_than_ts_ns: int, upto: int) -> int:
        """The highest index P <= upto such that every user change at or below P
        has `_ts` < older_than_ts_ns and at least `min_records` user changes lie
        above P (up to `upto`); 0 if none. Not above `snapshot().index`: nothing to do."""
        self._check_readable()
        return self._stable(
            lambda connection: self._purge_point(connection, min_records, older_than_ts_ns, upto)
        )

    def _purge_point(
        self, connection: sqlite3.Connection, min_records: int, older_than_ts_ns: int, upto: int
    ) -> int:
        with self._lock:
            generation = self._removal_generation
            truncations = self._truncations
            snapshot_index = self._state.snapshot.index
            upto = min(upto, self._state.last_index)
        return self._purge_scanner.purge_point(
            connection,
            min_records,
            older_than_ts_ns,
            upto,
            truncations,
            snapshot_index,
            unchanged=lambda: self._removal_generation == generation and generation % 2 == 0,
        )

    # Writes ----------------------------------------------------------------------

    def submit(
        self, batch: WriteBatch, *, timeout_s: float | None = 0.0
    ) -> concurrent.futures.Future[None]:
        """Queue `batch`; the future resolves once it is durable (or fails).

        With a full queue, wait up to `timeout_s` seconds for room (None: no
        limit), then raise StorageBusy. Raises StorageFailed after a failure,
        StorageClosed after `close`, ValueError for a malformed batch.
        Cancelling the future does not withdraw the batch.
        """
        batch.validate()
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._writes.put(Queued(batch, future=future), timeout_s)
        return future

    async def write(
        self,
        batch: WriteBatch,
        *,
        now_if_idle: bool = False,
        on_durable: Callable[[], None] | None = None,
    ) -> bool:
        """Persist `batch` durably (group-committed with concurrent writes).

        All writers of one event loop that share a commit are woken by one
        callback, not one cross-thread wake-up each. Cancelling the awaiting
        task does not withdraw the batch.

        `now_if_idle`: a batch of at most `WRITE_NOW_ENTRIES_MAX` entries and
        `WRITE_NOW_BYTES_MAX` bytes that only appends is written on this thread,
        blocking it for the fsync, when the writer thread is idle (`_write_now`).
        For a caller that writes one batch at a time (the Raft driver); concurrent
        writers would lose group commit.
        `on_durable`: written that way, called the moment the COMMIT returns,
        before the rows are published to readers (a follower's acknowledgement
        goes out ~35 µs sooner); it must not raise. Returns whether it was
        called: if not, the batch went to the writer thread, and is durable now.
        """
        batch.validate()
        if now_if_idle and self._write_now(batch, on_durable):
            return on_durable is not None
        loop = asyncio.get_running_loop()
        item = Queued(batch, loop=loop, waiter=loop.create_future())
        try:
            self._hand_over(self._writes.put(item, 0.0))
        except StorageBusy:
            await asyncio.to_thread(self._writes.put, item, None)
        assert item.waiter is not None
        await item.waiter
        return False

    def _write_now(self, batch: WriteBatch, on_durable: Callable[[], None] | None = None) -> bool:
        """Write a small append on the calling thread if the writer is idle; whether it did.

        Handing a batch to the writer thread and being woken when it is durable
        costs two thread wake-ups, ~0.12 ms on this project's machine against
        ~0.15 ms for the whole SQLite write with its fsync: a write at a time
        (one client, an idle follower) waits more for the hand-offs than for the
        disk. The caller's thread blocks for the fsync instead (SQLite releases
        the GIL meanwhile). Larger batches, i.e. writes under load, go to the
        writer thread, so the event loop keeps working while the disk does."""
        if len(batch.entries) > WRITE_NOW_ENTRIES_MAX or not _appends_only(batch):
            return False
        if self._last_group_entries > WRITE_NOW_ENTRIES_MAX:
            # Writes are arriving faster than one per fsync: the first small batch
            # after a large one is the head of the next group, and the event loop
            # has requests to read meanwhile (16 writers on one node: 0.92x the
            # writes/s when every such batch blocked the loop).
            return False
        if self._last_commit_s > WRITE_NOW_COMMIT_S_MAX:
            return False  # a slow disk: the loop serves reads while it works
        if batch.size_bytes() > WRITE_NOW_BYTES_MAX:
            return False  # summed last: under load the checks above end it first
        if not self._writes.claim_idle():
            return False
        try:
            [(_, outcome)] = self._write_batches([Queued(batch)], on_durable)
        finally:
            self._writes.release()
        if outcome is not None:
            raise fresh_error(outcome)  # what `write` would raise
        return True

    # The writer thread ---------------------------------------------------------------

    def _run_writer(self) -> None:
        try:
            while True:
                group = self._writes.take_group()
                if not group:
                    return
                try:
                    outcomes = self._write_group(group)
                finally:
                    self._writes.release()
                # Waiters learn the outcome once the connection is free again, so
                # a writer woken by it may write its next batch inline at once.
                settle(outcomes)
                if self._writes.failure is not None:
                    return
        except BaseException as error:  # a bug here must not leave writers waiting forever
            self._writes.fail(StorageFailed(f"storage writer crashed: {error!r}"))
            raise

    def _write_group(self, group: list[Queued]) -> Outcomes:
        """Write `group` in order: the batches between seeds as one transaction each
        run, a seed alone (it replaces the database). Returns each batch's outcome."""
        outcomes: Outcomes = []
        run: list[Queued] = []
        for item in [*group, None]:
            if item is not None and item.batch.seed is None:
                run.append(item)
                continue
            if run:
                outcomes += self._write_batches(run)
                run = []
            if item is None:
                return outcomes
            failure = self._writes.failure
            if failure is not None:
                outcomes.append((item, failure))
            else:
                outcomes.append((item, self._replace_with_seed(item)))
        return outcomes

    def _write_batches(
        self, group: list[Queued], on_durable: Callable[[], None] | None = None
    ) -> Outcomes:
        """Write `group` as one transaction; each batch's outcome (None: durable).
        `on_durable`: see `write`."""
        failure = self._writes.failure
        if failure is not None:  # an earlier part of the same group failed
            return [(item, failure) for item in group]
        transaction: GroupTransaction | None = None
        rejected: list[tuple[Queued, BatchRejected]] = []
        try:
            transaction = GroupTransaction(self._connection, self._state)
            for item in group:
                try:
                    transaction.apply(item.batch)
                except BatchRejected as error:
                    rejected.append((item, error))
            transaction.prepare_commit()
            # Never for a rejected batch: the caller would promise what is not written.
            commit_s = self._commit(transaction, None if rejected else on_durable)
            entries = transaction.entries_written
        except Exception as error:  # any disk, SQLite or injected failure: fail-stop
            if transaction is not None:
                _rollback_quietly(transaction)
            failure = self._writes.fail(
                StorageFailed(f"write failed, nothing acknowledged: {error!r}")
            )
            if transaction is not None and transaction.commit_started:
                failure = StorageFailed(str(failure), maybe_written=True)  # this group's
            return [(item, failure) for item in group]
        self.batches_written += len(group) - len(rejected)
        self._last_group_entries = entries
        self._last_commit_s = commit_s
        observer = self.commit_observer
        if observer is not None:
            observer(commit_s, entries)
        failed: dict[int, BaseException] = {id(item): error for item, error in rejected}
        return [(item, failed.get(id(item))) for item in group]

    def _replace_with_seed(self, item: Queued) -> Outcome:
        """Make the seed file the database (see `seed.py`). The seed gets this node's
        metadata and the batch's hard state first, so the database is this node's
        at every instant: the old file or the seed, swapped by one rename. Readers
        wait (the removal fence) while the connections are closed and reopened."""
        batch = item.batch
        seed = batch.seed
        assert seed is not None and batch.hard_state is not None
        try:
            prepare_seed(seed.path, {**self._state.meta, **batch.meta}, batch.hard_state)
        except (sqlite3.Error, OSError, StorageError) as error:  # the seed's file, not ours
            return BatchRejected(f"the seed could not be prepared: {error}")
        try:
            with self._removal_lock:
                self._removal_generation += 1  # odd: new reads wait for the lock
                try:
                    self._wait_reads_idle()
                    self._swap_database(seed.path)
                finally:
                    self._removal_generation += 1
        except Exception as error:  # a disk or SQLite failure: fail-stop, as any write
            return self._writes.fail(StorageFailed(f"installing a seed failed: {error!r}"))
        self.commit_count += 1
        self.batches_written += 1
        return None

    def _wait_reads_idle(self) -> None:
        with self._reads_idle:
            while self._reads_active:
                self._reads_idle.wait()

    def _swap_database(self, seed_path: Path) -> None:
        """Under the fence with no read running: close every connection, rename the
        seed over the database, reopen, publish the new state and an empty tail."""
        with self._lock:
            readers, self._readers = self._readers, []
            self._epoch += 1  # every reading thread opens a new connection
        for connection in readers:
            connection.close()
        # Everything committed into the old file itself, so that removing its WAL below
        # loses nothing should the process stop before the rename (another connection,
        # a backup's, would keep the last close from checkpointing).
        self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self._connection.close()
        path = schema.database_path(self.data_dir)
        for suffix in ("-wal", "-shm"):  # the old database's; the seed's WAL starts empty
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
        os.replace(seed_path, path)
        schema.fsync_directory(self.data_dir)
        pragmas, tail_cache_bytes, tail_warm_bytes = self._reopening
        self._connection = schema.connect_writer(self.data_dir, pragmas)
        schema.restrict_file_modes(self.data_dir)
        state = load_state(self._connection)
        tail = warm_tail(self._connection, state, tail_cache_bytes, tail_warm_bytes)
        with self._lock:
            self._state = state
            self._tail = tail
            self._truncations += 1  # whatever was scanned of the old log is gone
            self._purge_scanner = PurgeScanner()
        self._commit_hint.note(0)  # a new history: the old noted index means nothing

    def _commit(
        self, transaction: GroupTransaction, on_durable: Callable[[], None] | None = None
    ) -> float:
        """COMMIT (one fsync), `on_durable`, publish; the seconds the COMMIT took."""
        fence = transaction.removed
        if fence:
            self._removal_lock.acquire()
            self._removal_generation += 1
        try:
            if self._fault_injector is not None:
                self._fault_injector(self.commit_count + 1)
            started = time.perf_counter()
            transaction.commit()
            commit_s = time.perf_counter() - started
            self.commit_count += 1
            if on_durable is not None:
                on_durable()
            self._publish(transaction.state, transaction.tail_ops, transaction.truncated)
            if transaction.discarded:  # a new history: the old commit index means nothing
                self._commit_hint.note(0)
        finally:
            if fence:
                self._removal_generation += 1
                self._removal_lock.release()
        return commit_s

    def _publish(self, state: LogState, tail_ops: list[TailOp], truncated: bool) -> None:
        with self._lock:
            if truncated:
                self._truncations += 1
            for op in tail_ops:
                if isinstance(op, TailAppend):
                    self._tail.append(op.first_index, op.records)
                elif isinstance(op, TailTruncate):
                    self._tail.truncate_from(op.index)
                elif isinstance(op, TailCompact):
                    self._tail.compact_through(op.index)
            self._state = state
            if self._tail.end != state.last_index + 1:  # a bug in this package: stop
                raise RuntimeError(f"tail ends at {self._tail.end - 1}, log at {state.last_index}")

    # Reading helpers -------------------------------------------------------------

    def _check_readable(self) -> None:
        failure = self._writes.failure
        if isinstance(failure, CorruptionError):
            raise fresh_error(failure)
        if self._closed:
            raise StorageClosed("storage is closed")

    def _reader(self) -> sqlite3.Connection:
        local = self._local
        connection: sqlite3.Connection | None = getattr(local, "connection", None)
        if connection is None or local.epoch != self._epoch:
            connection = schema.connect_reader(self.data_dir)
            with self._lock:
                if self._closed:
                    connection.close()
                    raise StorageClosed("storage is closed")
                self._readers.append(connection)
                local.epoch = self._epoch
            local.connection = connection
        return connection

    def _stable(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """Run an SQLite read so that it never mixes states across a removal.

        A read that overlapped a truncation or compaction is retried; a row
        that is missing without such a race, or a checksum mismatch, is
        corruption: the storage stops serving.
        """
        while True:
            generation = self._removal_generation
            if generation & 1:
                with self._removal_lock:  # wait for the removal to publish
                    continue
            with self._reads_idle:  # a seed's swap waits for running reads, not new ones
                if self._removal_generation != generation:
                    continue
                self._reads_active += 1
            try:
                result = read(self._reader())
            except (RowMissing, Compacted, Unavailable) as error:
                if self._removal_generation != generation:
                    continue
                if isinstance(error, RowMissing):
                    raise self._corrupt(
                        CorruptionError(f"entry {error.index} is missing", index=error.index)
                    ) from None
                raise
            except CorruptionError as error:
                raise self._corrupt(error) from None
            except sqlite3.DatabaseError as error:
                if "malformed" in str(error) or isinstance(error, sqlite3.DataError):
                    raise self._corrupt(CorruptionError(f"database is corrupt: {error}")) from None
                raise
            finally:
                with self._reads_idle:
                    self._reads_active -= 1
                    if not self._reads_active:
                        self._reads_idle.notify_all()
            if self._removal_generation == generation:
                return result

    def _corrupt(self, error: CorruptionError) -> CorruptionError:
        self._writes.fail(error)
        return error

    def _stored_term(self, connection: sqlite3.Connection, index: int) -> int:
        with self._lock:
            snapshot = self._state.snapshot
            _check_index(index, snapshot.index, self._state.last_index)
            if index == snapshot.index:
                return snapshot.term
        entry = reads.entry_at(connection, index)
        if entry is None:
            raise RowMissing(index)
        return entry.term

    def _stored_change(
        self, connection: sqlite3.Connection, index: int, upto: int | None
    ) -> Entry | None:
        with self._lock:
            state = self._state
            last_index = state.last_index if upto is None else min(upto, state.last_index)
            if index <= state.snapshot.index or index > last_index:
                return None
        entry = reads.entry_at(connection, index)
        if entry is None:
            raise RowMissing(index)
        return entry

    def _stored_entries(
        self, connection: sqlite3.Connection, low: int, high: int, max_bytes: int
    ) -> list[Entry]:
        with self._lock:
            state = self._state
            if low <= state.snapshot.index:
                raise _compacted(low, state.snapshot.index)
            _check_index(high - 1, state.snapshot.index, state.last_index)
        return reads.entries_between(connection, low, high, max_bytes)

    def _tail_changes(
        self, since: int, want: int, tags: tuple[str, ...], entry_type: int | None, upto: int
    ) -> _TailScan | None:
        """The page from the tail (caller holds `_lock`), or None if SQLite must answer.

        A sparse filter could scan the whole tail for a few matches, so the
        scan stops after TAIL_SCAN_ENTRIES_MAX entries and says where SQLite,
        with its tag and type indexes, should resume.
        """
        low = max(since + 1, self._state.snapshot.index + 1)
        if low < self._tail.start:
            return None
        high = min(upto + 1, self._tail.end, low + max(self._tail_scan_entries_max, want))
        first, records = self._tail.window(low, high)
        tag_set = frozenset(tags)
        result: list[tuple[int, bytes]] = []
        for index, record in enumerate(records, start=first):
            if _matches(record, tag_set, entry_type):
                result.append((index, record[DATA]))
                if len(result) >= want:
                    return _TailScan(result, None)
        return _TailScan(result, high - 1 if high <= upto else None)

    def _resume_changes_after(
        self,
        connection: sqlite3.Connection,
        since: int,
        resume_after: int,
        found: list[tuple[int, bytes]],
        want: int,
        tags: tuple[str, ...],
        entry_type: int | None,
        upto: int,
    ) -> list[tuple[int, bytes]]:
        """`found` (from the tail, up to `resume_after`) continued from SQLite."""
        with self._lock:
            compacted = self._state.snapshot.index > resume_after
        if compacted:  # a compaction ran since the tail was read: start over
            return reads.changes_after(connection, since, want, tags, entry_type, upto)
        wanted = want - len(found)
        return found + reads.changes_after(connection, resume_after, wanted, tags, entry_type, upto)

    def _at_start(
        self,
        state: LogState,
        since: int,
        tags: tuple[str, ...],
        entry_type: int | None,
        known: KnownAtStart | None,
    ) -> bool:
        """Whether no retained user change at or below `since` matches the filter."""
        at_start = self._at_start_in_memory(state, since, tags, entry_type, known)
        if at_start is not None:
            return at_start
        return not self._stable(
            lambda connection: reads.matching_at_or_below(connection, since, tags, entry_type)
        )

    def _tail_has_match_near(
        self, since: int, tags: tuple[str, ...], entry_type: int | None
    ) -> bool:
        """Whether a change just at or below `since` matches, from the tail alone.

        A long-polling consumer's `since` is usually the last change it got,
        which matches its own filter: this answers atStart without SQLite.
        """
        tag_set = frozenset(tags)
        with self._lock:
            _, records = self._tail.window(since - _AT_START_TAIL_PROBE + 1, since + 1)
        return any(_matches(record, tag_set, entry_type) for record in reversed(records))


# Module helpers --------------------------------------------------------------------


def _matches(record: TailRecord, tags: frozenset[str], entry_type: int | None) -> bool:
    """Whether a cached entry is a user change that passes the filter."""
    record_type = record[TYPE]
    if record_type < 0 or (entry_type is not None and record_type != entry_type):
        return False
    return not tags or not tags.isdisjoint(record[TAGS])


def _compacted(index: int, snapshot_index: int) -> Compacted:
    return Compacted(f"entry {index} is compacted (first index {snapshot_index + 1})")


def _check_index(index: int, snapshot_index: int, last_index: int) -> None:
    if index < snapshot_index:
        raise _compacted(index, snapshot_index)
    if index > last_index:
        raise Unavailable(f"entry {index} is above last index {last_index}")


def _limit_bytes(entries: Iterable[Entry], max_bytes: int) -> list[Entry]:
    """At least one entry, then only while the total data size stays <= max_bytes."""
    result: list[Entry] = []
    total_bytes = 0
    for entry in entries:
        total_bytes += len(entry.data)
        if result and total_bytes > max_bytes:
            break
        result.append(entry)
    return result


def _appends_only(batch: WriteBatch) -> bool:
    """Nothing that removes entries or replaces the database (those fence readers)."""
    return (
        batch.seed is None
        and batch.snapshot is None
        and batch.compact_to is None
        and not batch.discard_log
    )


def _rollback_quietly(transaction: GroupTransaction) -> None:
    # If even the rollback fails the connection is unusable; we are failing anyway.
    with contextlib.suppress(sqlite3.Error):
        transaction.rollback()
