"""The bounded queue between submitters and the writer thread, and how waiters
are told the outcome.

A queued batch is awaited either by a `concurrent.futures.Future` (threads)
or by an asyncio future on some loop. After a commit, thread futures are
resolved directly, and each loop gets ONE `call_soon_threadsafe` for all of
its waiters in that commit, not one cross-thread wake-up per write.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from changeagent.storage.batch import WriteBatch
from changeagent.storage.errors import CorruptionError, StorageBusy, StorageClosed, StorageFailed

Outcome = BaseException | None  # None: durable
HAND_OVER_S_MAX = 0.001  # the longest a submitter waits for the writer to take its batch
HAND_OVER_SLOW_S = 0.00015  # wake-ups slower than this on average: the CPUs are busy
HAND_OVER_MEAN_WAITS = 8  # the moving mean of the waits weighs the last ~8
HAND_OVER_SKIP = 64  # hand-overs skipped when they are slow


@dataclass(slots=True)
class Queued:
    """A queued batch and whoever waits for it: a thread's future or a loop's."""

    batch: WriteBatch
    future: concurrent.futures.Future[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[None] | None = None
    # Held while the batch waits for an idle writer to take it: see `put`.
    taken: threading.Lock | None = None


class WriteQueue:
    """Batches waiting for the writer, at most `batches_max` of them.

    Also holds the storage's failure: once set, nothing more is queued.
    """

    def __init__(self, batches_max: int, group_batches_max: int, group_bytes_max: int) -> None:
        self._batches_max = batches_max
        self._group_batches_max = group_batches_max
        self._group_bytes_max = group_bytes_max
        self._items: collections.deque[Queued] = collections.deque()
        self._condition = threading.Condition()
        # Whether a group is being written: by the writer thread (taken with
        # `take_group`) or by a submitter that claimed the idle writer
        # (`claim_idle`). One at a time, so batches keep their order.
        self._busy = False
        self.closing = False
        self.failure: StorageFailed | None = None

    def __len__(self) -> int:
        return len(self._items)

    def check_writable(self) -> None:
        if self.failure is not None:
            raise fresh_error(self.failure)
        if self.closing:
            raise StorageClosed("storage is closed")

    def put(self, item: Queued, timeout_s: float | None) -> threading.Lock | None:
        """Queue `item`, waiting up to `timeout_s` for room (None: no limit).

        Returns a held lock when this woke an idle writer: the writer releases it
        the moment it takes the batch. A caller that holds the GIL and has more
        Python to run (the event loop) should block on it first (`HandOver`):
        otherwise the woken writer waits for the GIL until the loop next polls,
        0.15-0.25 ms on this project's machine at 16 writers, and the group's
        fsync starts that much later (docs/BENCHMARKS.md, issue 15)."""
        with self._condition:
            while True:
                self.check_writable()
                if len(self._items) < self._batches_max:
                    break
                if timeout_s is not None and timeout_s <= 0:
                    raise StorageBusy(f"{len(self._items)} write batches are queued")
                if not self._condition.wait(timeout_s) and timeout_s is not None:
                    raise StorageBusy(f"{len(self._items)} write batches are queued")
            self._items.append(item)
            if len(self._items) > 1:
                return None  # the writer only ever waits on an empty queue
            self._condition.notify_all()
            if self._busy:
                return None  # it takes the batch after the group it is writing
            item.taken = threading.Lock()
            item.taken.acquire()
            return item.taken

    def claim_idle(self) -> bool:
        """Claim the connection when nothing is queued and nothing is being written,
        so the caller may write one batch itself; `release` ends the claim."""
        with self._condition:
            if self._items or self._busy or self.failure is not None or self.closing:
                return False
            self._busy = True
            return True

    def release(self) -> None:
        """The group taken or claimed is written: the next may go."""
        with self._condition:
            self._busy = False
            if self._items or self.closing:
                self._condition.notify_all()

    def take_group(self) -> list[Queued]:
        """Wait for work; take every queued batch, up to the group limits, and
        hold the connection until `release`. Returns [] once closing and empty."""
        with self._condition:
            while self._busy or (not self._items and not self.closing):
                self._condition.wait()
            group: list[Queued] = []
            group_bytes = 0
            while self._items and len(group) < self._group_batches_max:
                batch_bytes = self._items[0].batch.size_bytes()
                if group and group_bytes + batch_bytes > self._group_bytes_max:
                    break
                item = self._items.popleft()
                group_bytes += batch_bytes
                if item.future is not None:
                    # From here on a cancel() fails: the batch will be written.
                    item.future.set_running_or_notify_cancel()
                group.append(item)
                _release_taken(item)
            self._busy = bool(group)
            self._condition.notify_all()  # room for blocked submitters
            return group

    def close(self) -> bool:
        """Stop taking batches (the writer drains what is queued). False if already closing."""
        with self._condition:
            if self.closing:
                return False
            self.closing = True
            self._condition.notify_all()
            return True

    def fail(self, error: StorageFailed) -> StorageFailed:
        """Record the failure (the first one wins, except that corruption wins
        over a write failure), fail every queued batch, and return the failure."""
        with self._condition:
            if self.failure is None or (
                isinstance(error, CorruptionError) and not isinstance(self.failure, CorruptionError)
            ):
                self.failure = error
            failure = self.failure
            queued = list(self._items)
            self._items.clear()
            for item in queued:
                _release_taken(item)
            self._condition.notify_all()
        for item in queued:
            if item.future is not None:
                item.future.set_running_or_notify_cancel()
        settle([(item, failure) for item in queued])
        return failure


def settle(outcomes: list[tuple[Queued, Outcome]]) -> None:
    """Resolve thread futures now, and each loop's waiters with one callback."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Queued, Outcome]]] = {}
    for item, error in outcomes:
        if item.future is not None:
            if item.future.cancelled() or item.future.done():
                continue
            if error is None:
                item.future.set_result(None)
            else:
                item.future.set_exception(fresh_error(error))
        elif item.loop is not None:
            by_loop.setdefault(item.loop, []).append((item, error))
    for loop, waiting in by_loop.items():
        # A closed loop has nobody left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_waiters, waiting)


def _settle_waiters(waiting: list[tuple[Queued, Outcome]]) -> None:
    """On the waiters' loop: resolve every asyncio waiter of one commit."""
    for item, error in waiting:
        waiter = item.waiter
        if waiter is None or waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(fresh_error(error))


def fresh_error(error: BaseException) -> BaseException:
    """A new instance of a stored failure, so tracebacks do not pile up on one object."""
    if isinstance(error, CorruptionError):
        return CorruptionError(str(error), index=error.index)
    if isinstance(error, StorageFailed):
        return StorageFailed(str(error), error.maybe_written)
    return error


class HandOver:
    """Blocks the caller, without the GIL, until the writer woken by `put` has taken
    its batch (at most `HAND_OVER_S_MAX`), so that the writer takes the GIL at once:
    the caller pays the writer's wake-up, ~10-50 µs when a CPU is free, instead of
    the writer a wait for the GIL until the caller next lets go of it.

    When the CPUs are busy (three members and a load generator on two cores) the
    wake-up itself takes a median 0.2-0.25 ms, the caller would idle through it,
    and the writer is no later for waiting on the GIL instead (16 writers through a
    follower: 3,215-3,261 writes/s handing over every time, 3,391-3,481 never).
    So when the mean of the recent waits (`HAND_OVER_MEAN_WAITS`) passes
    `HAND_OVER_SLOW_S`, the next `HAND_OVER_SKIP` hand-overs are skipped, and the
    mean starts again from nothing (one member, 16 writers: a median wait of 45
    µs, never skipped)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._skip = 0
        self._mean_s = 0.0

    def __call__(self, taken: threading.Lock | None) -> None:
        if taken is None:
            return
        if self._skip:
            self._skip -= 1
            return
        started = self._clock()
        taken.acquire(timeout=HAND_OVER_S_MAX)
        waited_s = self._clock() - started
        self._mean_s += (waited_s - self._mean_s) / HAND_OVER_MEAN_WAITS
        if self._mean_s > HAND_OVER_SLOW_S:
            self._skip = HAND_OVER_SKIP
            self._mean_s = 0.0


def _release_taken(item: Queued) -> None:
    taken, item.taken = item.taken, None
    if taken is not None:
        taken.release()
