"""`Storage`: the durable Raft log and change list on SQLite, with a hot tail."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from changeagent.raft.entry import Entry, HardState
from changeagent.raft.interfaces import Compacted, Snapshot, Unavailable
from changeagent.storage import reads, schema
from changeagent.storage.batch import WriteBatch
from changeagent.storage.errors import (
    CorruptionError,
    StorageBusy,
    StorageClosed,
    StorageError,
    StorageFailed,
)
from changeagent.storage.purge import PurgeScanner
from changeagent.storage.reads import RowMissing
from changeagent.storage.records import (
    decode_hard_state,
    decode_snapshot,
    derive_fields,
    open_meta,
    seal_meta,
)
from changeagent.storage.tail import NO_TAGS, TailCache, entry_cost_bytes
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

TAIL_CACHE_BYTES_DEFAULT = 64 * 1024 * 1024
TAIL_WARM_BYTES_DEFAULT = 4 * 1024 * 1024
TAIL_SCAN_ENTRIES_MAX = 1024
QUEUE_BATCHES_MAX = 8192
GROUP_BATCHES_MAX = 1024
GROUP_BYTES_MAX = 32 * 1024 * 1024
LOCK_FILE = "LOCK"


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
class _TailScan:
    items: list[tuple[int, bytes]]
    resume_after: int | None  # where SQLite must continue, or None if the scan is complete


@dataclass(slots=True)
class _Queued:
    """A queued batch and whoever waits for it: a thread's future or a loop's."""

    batch: WriteBatch
    future: concurrent.futures.Future[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[None] | None = None


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
        lock_fd = _lock_directory(data_dir)
        try:
            connection = schema.connect_writer(data_dir, sqlite_pragmas)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            schema.restrict_file_modes(data_dir)
            state = _load_state(connection)
            tail = _warm_tail(connection, state, tail_cache_bytes, tail_warm_bytes)
        except BaseException:
            connection.close()
            os.close(lock_fd)
            raise
        return cls(
            data_dir=data_dir,
            connection=connection,
            lock_fd=lock_fd,
            state=state,
            tail=tail,
            limits=(queue_batches_max, group_batches_max, group_bytes_max),
            fault_injector=fault_injector,
            tail_scan_entries_max=tail_scan_entries_max,
        )

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
    ) -> None:
        """Use `Storage.open`."""
        self._tail_scan_entries_max = tail_scan_entries_max
        self.data_dir = data_dir
        self._connection = connection
        self._lock_fd = lock_fd
        self._queue_batches_max, self._group_batches_max, self._group_bytes_max = limits
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
        # The write queue, shared by submitters and the writer thread.
        self._queue: collections.deque[_Queued] = collections.deque()
        self._queue_condition = threading.Condition()
        self._closing = False
        self._closed = False
        self._failure: StorageFailed | None = None
        self.commit_count = 0  # transactions committed (one fsync each)
        self.batches_written = 0
        self._writer = threading.Thread(
            target=self._run_writer, name=f"storage-writer:{data_dir}", daemon=True
        )
        self._writer.start()

    def close(self) -> None:
        """Write every batch already submitted, stop the writer, close the files."""
        with self._queue_condition:
            if self._closing:
                already = True
            else:
                already = False
                self._closing = True
                self._queue_condition.notify_all()
        self._writer.join()
        if already:
            return
        with self._lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for connection in readers:
            connection.close()
        self._connection.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def failure(self) -> str | None:
        """Why the storage stopped (a failed write or corruption), or None."""
        failure = self._failure
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
            return cached.term
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
                return _limit_bytes((entry for entry, _ in self._tail.scan(low, high)), max_bytes)
        return self._stable(
            lambda connection: self._stored_entries(connection, low, high, max_bytes)
        )

    # Other state -----------------------------------------------------------------

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
            "queued_batches": len(self._queue),
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
    ) -> ChangePage:
        """At most `limit` user changes with since < index <= upto matching the
        filter (any of `tags`, when given; `type`, when given), in index order.
        `upto` is the commit index (default: the last durable index)."""
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
        shown = items[:limit]
        return ChangePage(
            bodies=[body for _, body in shown],
            last_index=shown[-1][0] if shown else since,
            at_start=self._at_start(state, since, tag_filter, type),
            at_end=len(items) <= limit,
            first_retained=state.first_user_index,
            compacted_through=state.snapshot.index,
        )

    def get_change(self, index: int, upto: int | None = None) -> bytes | None:
        """The stored bytes of user change `index`; None if unknown, purged,
        internal, or above `upto` (the commit index; default the last index)."""
        self._check_readable()
        with self._lock:
            state = self._state
            last_index = state.last_index if upto is None else min(upto, state.last_index)
            if index <= state.snapshot.index or index > last_index:
                return None
            entry = self._tail.get(index)
        if entry is None:
            entry = self._stable(lambda connection: self._stored_change(connection, index, upto))
        return None if entry is None or entry.type < 0 else entry.data

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
            connection, min_records, older_than_ts_ns, upto, truncations, snapshot_index,
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
        self._enqueue(_Queued(batch, future=future), timeout_s)
        return future

    async def write(self, batch: WriteBatch) -> None:
        """Persist `batch` durably (group-committed with concurrent writes).

        All writers of one event loop that share a commit are woken by one
        callback, not one cross-thread wake-up each. Cancelling the awaiting
        task does not withdraw the batch.
        """
        batch.validate()
        loop = asyncio.get_running_loop()
        item = _Queued(batch, loop=loop, waiter=loop.create_future())
        try:
            self._enqueue(item, 0.0)
        except StorageBusy:
            await asyncio.to_thread(self._enqueue, item, None)
        assert item.waiter is not None
        await item.waiter

    def _enqueue(self, item: _Queued, timeout_s: float | None) -> None:
        with self._queue_condition:
            while True:
                self._check_writable()
                if len(self._queue) < self._queue_batches_max:
                    break
                if timeout_s is not None and timeout_s <= 0:
                    raise StorageBusy(f"{len(self._queue)} write batches are queued")
                if not self._queue_condition.wait(timeout_s) and timeout_s is not None:
                    raise StorageBusy(f"{len(self._queue)} write batches are queued")
            self._queue.append(item)
            if len(self._queue) == 1:
                self._queue_condition.notify_all()

    # The writer thread ---------------------------------------------------------------

    def _run_writer(self) -> None:
        try:
            while True:
                group = self._take_group()
                if not group:
                    return
                self._write_group(group)
                if self._failure is not None:
                    return
        except BaseException as error:  # a bug here must not leave writers waiting forever
            self._fail_writes(StorageFailed(f"storage writer crashed: {error!r}"))
            raise

    def _take_group(self) -> list[_Queued]:
        """Wait for work; take every queued batch, up to the group limits."""
        with self._queue_condition:
            while not self._queue and not self._closing:
                self._queue_condition.wait()
            group: list[_Queued] = []
            group_bytes = 0
            while self._queue and len(group) < self._group_batches_max:
                batch_bytes = self._queue[0].batch.size_bytes()
                if group and group_bytes + batch_bytes > self._group_bytes_max:
                    break
                item = self._queue.popleft()
                group_bytes += batch_bytes
                if item.future is not None:
                    # From here on a cancel() fails: the batch will be written.
                    item.future.set_running_or_notify_cancel()
                group.append(item)
            self._queue_condition.notify_all()  # room for blocked submitters
            return group

    def _write_group(self, group: list[_Queued]) -> None:
        transaction: GroupTransaction | None = None
        rejected: list[tuple[_Queued, BatchRejected]] = []
        try:
            transaction = GroupTransaction(self._connection, self._state)
            for item in group:
                try:
                    transaction.apply(item.batch)
                except BatchRejected as error:
                    rejected.append((item, error))
            transaction.prepare_commit()
            self._commit(transaction)
        except Exception as error:  # any disk, SQLite or injected failure: fail-stop
            if transaction is not None:
                _rollback_quietly(transaction)
            failure = self._fail_writes(
                StorageFailed(f"write failed, nothing acknowledged: {error!r}")
            )
            _settle([(item, failure) for item in group])
            return
        self.batches_written += len(group) - len(rejected)
        failed: dict[int, BaseException] = {id(item): error for item, error in rejected}
        _settle([(item, failed.get(id(item))) for item in group])

    def _commit(self, transaction: GroupTransaction) -> None:
        fence = transaction.removed
        if fence:
            self._removal_lock.acquire()
            self._removal_generation += 1
        try:
            if self._fault_injector is not None:
                self._fault_injector(self.commit_count + 1)
            transaction.commit()
            self.commit_count += 1
            self._publish(transaction.state, transaction.tail_ops, transaction.truncated)
        finally:
            if fence:
                self._removal_generation += 1
                self._removal_lock.release()

    def _publish(self, state: LogState, tail_ops: list[TailOp], truncated: bool) -> None:
        with self._lock:
            if truncated:
                self._truncations += 1
            for op in tail_ops:
                if isinstance(op, TailAppend):
                    self._tail.append(op.entries, op.tags)
                elif isinstance(op, TailTruncate):
                    self._tail.truncate_from(op.index)
                elif isinstance(op, TailCompact):
                    self._tail.compact_through(op.index)
            self._state = state
            if self._tail.end != state.last_index + 1:  # a bug in this package: stop
                raise RuntimeError(
                    f"tail ends at {self._tail.end - 1}, log at {state.last_index}"
                )

    def _fail_writes(self, error: StorageFailed) -> StorageFailed:
        """Fail-stop: record why, fail every queued batch; never retry."""
        with self._queue_condition:
            if self._failure is None:
                self._failure = error
            failure = self._failure
            queued = list(self._queue)
            self._queue.clear()
            self._queue_condition.notify_all()
        for item in queued:
            if item.future is not None:
                item.future.set_running_or_notify_cancel()
        _settle([(item, failure) for item in queued])
        return failure

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise _fresh(self._failure)
        if self._closing:
            raise StorageClosed("storage is closed")

    # Reading helpers -------------------------------------------------------------

    def _check_readable(self) -> None:
        failure = self._failure
        if isinstance(failure, CorruptionError):
            raise _fresh(failure)
        if self._closed:
            raise StorageClosed("storage is closed")

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = schema.connect_reader(self.data_dir)
            with self._lock:
                if self._closed:
                    connection.close()
                    raise StorageClosed("storage is closed")
                self._readers.append(connection)
            self._local.connection = connection
        return connection

    def _stable(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """Run an SQLite read so that it never mixes states across a removal.

        A read that overlapped a truncation or compaction is retried; a row
        that is missing without such a race, or a checksum mismatch, is
        corruption: the storage stops serving.
        """
        connection = self._reader()
        while True:
            generation = self._removal_generation
            if generation & 1:
                with self._removal_lock:  # wait for the removal to publish
                    continue
            try:
                result = read(connection)
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
            if self._removal_generation == generation:
                return result

    def _corrupt(self, error: CorruptionError) -> CorruptionError:
        with self._queue_condition:
            if not isinstance(self._failure, CorruptionError):
                self._failure = error
            self._queue_condition.notify_all()
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
        entries, entry_tags = self._tail.window(low, high)
        tag_set = frozenset(tags)
        result: list[tuple[int, bytes]] = []
        for entry, tags_of_entry in zip(entries, entry_tags, strict=True):
            if entry.type < 0 or (entry_type is not None and entry.type != entry_type):
                continue
            if tag_set and tag_set.isdisjoint(tags_of_entry):
                continue
            result.append((entry.index, entry.data))
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
        self, state: LogState, since: int, tags: tuple[str, ...], entry_type: int | None
    ) -> bool:
        first_user_index = state.first_user_index
        if first_user_index == 0 or first_user_index > since:
            return True  # no user change at all at or below `since`
        if not tags and entry_type is None:
            return False
        return not self._stable(
            lambda connection: reads.matching_at_or_below(connection, since, tags, entry_type)
        )


# Module helpers --------------------------------------------------------------------


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


def _settle(outcomes: list[tuple[_Queued, BaseException | None]]) -> None:
    """Resolve thread futures now, and each loop's waiters with one callback."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Queued, BaseException | None]]] = {}
    for item, error in outcomes:
        if item.future is not None:
            if item.future.cancelled() or item.future.done():
                continue
            if error is None:
                item.future.set_result(None)
            else:
                item.future.set_exception(_fresh(error))
        elif item.loop is not None:
            by_loop.setdefault(item.loop, []).append((item, error))
    for loop, waiting in by_loop.items():
        # A closed loop has nobody left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_waiters, waiting)


def _settle_waiters(waiting: list[tuple[_Queued, BaseException | None]]) -> None:
    """On the waiters' loop: resolve every asyncio waiter of one commit."""
    for item, error in waiting:
        waiter = item.waiter
        if waiter is None or waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(_fresh(error))


def _fresh(error: BaseException) -> BaseException:
    """A new instance of a stored failure, so tracebacks do not pile up on one object."""
    if isinstance(error, CorruptionError):
        return CorruptionError(str(error), index=error.index)
    if isinstance(error, StorageFailed):
        return StorageFailed(str(error))
    return error


def _rollback_quietly(transaction: GroupTransaction) -> None:
    # If even the rollback fails the connection is unusable; we are failing anyway.
    with contextlib.suppress(sqlite3.Error):
        transaction.rollback()


def _lock_directory(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory while open: one process per log."""
    descriptor = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StorageError(f"{data_dir} is in use by another storage") from None
    return descriptor


def _load_state(connection: sqlite3.Connection) -> LogState:
    """Read the metadata and the log's bounds, checking both."""
    meta: dict[str, bytes] = {}
    for key, stored in connection.execute("SELECT key, value FROM meta").fetchall():
        value = open_meta(key, stored)
        if value is None:
            raise CorruptionError(f"checksum mismatch in metadata {key!r}")
        meta[key] = value
    version = meta.pop(schema.META_SCHEMA_VERSION, None)
    if version is None:
        value = str(schema.SCHEMA_VERSION).encode()
        connection.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            (schema.META_SCHEMA_VERSION, seal_meta(schema.META_SCHEMA_VERSION, value)),
        )
    elif int(version) != schema.SCHEMA_VERSION:
        raise StorageError(f"unsupported storage schema version {int(version)}")
    hard_state_data = meta.pop(schema.META_HARD_STATE, None)
    snapshot_data = meta.pop(schema.META_SNAPSHOT, None)
    hard_state = HardState() if hard_state_data is None else decode_hard_state(hard_state_data)
    snapshot = Snapshot() if snapshot_data is None else decode_snapshot(snapshot_data)
    first, last = connection.execute("SELECT min(idx), max(idx) FROM entries").fetchone()
    if first is not None and first != snapshot.index + 1:
        raise CorruptionError(
            f"log starts at {first} but the snapshot ends at {snapshot.index}", index=first
        )
    row = connection.execute(
        "SELECT idx FROM entries WHERE +type >= 0 ORDER BY idx LIMIT 1"
    ).fetchone()
    return LogState(
        snapshot=snapshot,
        last_index=snapshot.index if last is None else int(last),
        hard_state=hard_state,
        first_user_index=0 if row is None else int(row[0]),
        meta=meta,
    )


def _warm_tail(
    connection: sqlite3.Connection, state: LogState, budget_bytes: int, warm_bytes: int
) -> TailCache:
    """A tail holding the newest entries, up to `warm_bytes`, each verified."""
    tail = TailCache(budget_bytes, start=state.last_index + 1)
    warm_bytes = min(warm_bytes, budget_bytes)
    newest: list[Entry] = []
    used_bytes = 0
    expected = state.last_index
    rows = reads.newest_entries(connection, state.snapshot.index + 1)
    try:
        for entry in rows:
            if entry.index != expected:
                raise CorruptionError(f"entry {expected} is missing", index=expected)
            used_bytes += entry_cost_bytes(entry)
            if used_bytes > warm_bytes:
                break
            newest.append(entry)
            expected -= 1
    finally:
        rows.close()  # closes the cursor now, even when we stopped early
    newest.reverse()
    tags = [derive_fields(entry.data).tags if entry.type >= 0 else NO_TAGS for entry in newest]
    tail.append(newest, tags)
    return tail
