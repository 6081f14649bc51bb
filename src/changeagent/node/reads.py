"""Reads of the change list: pages, single changes, long-polls, linearizable reads.

Reads serve this node's applied prefix. When the in-memory hot tail can answer
(consumers near the end, the common case) a page is built on the event loop
with no thread hop; otherwise the read runs in a worker thread against SQLite,
so the loop never waits on disk. A linearizable read first asks the leader for
a read index (§6.4) and waits until this node has applied it. A checksum
mismatch fails the node (it never serves corrupt data) and answers 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from changeagent.node.errors import DataCorrupted
from changeagent.node.query import ChangeQuery, KnownPrefix, PageResult
from changeagent.node.replica import Replica
from changeagent.node.waiters import CommitWaiters, DeliveryHook
from changeagent.storage import ChangePage, CorruptionError, KnownAtStart

T = TypeVar("T")


class ChangeReader:
    """Reads over `replica`'s applied prefix; wakes long-polls as it advances."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        self.storage = replica.storage
        self._waiters = CommitWaiters(
            self._probe_in_memory, self._read_in_memory, self._read_committed
        )
        replica.on_applied(self._waiters.notify)

    @property
    def long_poll_count(self) -> int:
        return len(self._waiters)

    def close_long_polls(self) -> None:
        """Shutdown: every long-poll answers now with what it has."""
        self._waiters.close()

    async def linearizable_barrier(self) -> None:
        """Wait until this node has applied every write acknowledged before the call."""
        replica = self._replica
        index = await replica.read_index()
        await replica.wait_applied(index, replica.limits.commit_timeout_s)

    async def read_changes(self, query: ChangeQuery) -> PageResult:
        """Committed changes after `query.since`: from memory on the loop when the hot
        tail can answer with bounded work (consumers near the end; see
        `Storage.read_changes_in_memory`), else from SQLite in a worker thread."""
        return await self._read_upto(query, self._replica.applied.index)

    async def _read_upto(
        self, query: ChangeQuery, upto: int, known: KnownPrefix | None = None
    ) -> PageResult:
        page = self._read_in_memory(query, upto, known)
        if page is not None:
            return page
        return await asyncio.to_thread(self._read_committed, query, upto, known)

    async def wait_changes(
        self, query: ChangeQuery, block_s: float, hook: DeliveryHook | None = None
    ) -> PageResult:
        """Like read_changes, but wait up to `block_s` for a matching change to commit;
        `hook` delivers the page the moment it commits (`CommitWaiters.wait`)."""
        applied = self._replica.applied
        deadline = asyncio.get_running_loop().time() + block_s
        upto = applied.index
        page = await self._read_upto(query, upto)
        # A commit may land while a cold read runs in a thread, before this request is
        # registered as a waiter: read again (only what is new) until the read covers
        # the commit index, then register with no await in between, so no wake-up can
        # be missed.
        while not page.bodies and upto < applied.index:
            known = KnownPrefix.after_read(query, page, upto)
            upto = applied.index
            page = await self._read_upto(query, upto, known)
        remaining_s = deadline - asyncio.get_running_loop().time()
        if page.bodies or remaining_s <= 0 or self._replica.closing:
            return page
        known = KnownPrefix.after_read(query, page, upto)
        del page  # not kept by each of thousands of waiting requests
        # `register` and the future, not `CommitWaiters.wait`: a frame less for each.
        waiter = self._waiters.register(query, known, remaining_s, hook)
        if waiter is not None:
            try:
                woken = await waiter.future
            finally:
                self._waiters.unregister(waiter)
            if woken is not None:
                return woken
        return await self._read_upto(query, applied.index, known)  # only what is new

    def get_change(self, index: int) -> bytes | None:
        if index > self._replica.applied.index:
            return None
        return self._guard(lambda: self.storage.get_change(index))

    def _read_committed(
        self, query: ChangeQuery, upto: int, known: KnownPrefix | None = None
    ) -> PageResult:
        """The page, from SQLite where the tail cannot answer: blocking, for a worker
        thread. With `known`, only what lies after `known.resume_after(query)`."""
        since, at_start = _resume_point(query, known)
        page = self._guard(
            lambda: self.storage.read_changes(
                since, query.limit, query.tags, query.type, upto, at_start=at_start
            )
        )
        return self._page_result(query, page)

    def _read_in_memory(
        self, query: ChangeQuery, upto: int, known: KnownPrefix | None = None
    ) -> PageResult | None:
        """The page from the hot tail with bounded work, never SQLite; else None."""
        since, at_start = _resume_point(query, known)
        page = self._guard(
            lambda: self.storage.read_changes_in_memory(
                since, query.limit, query.tags, query.type, upto, at_start=at_start
            )
        )
        return None if page is None else self._page_result(query, page)

    def _probe_in_memory(self, query: ChangeQuery, after: int, upto: int) -> bool | None:
        """Whether a change in (after, upto] matches, from the tail with bounded work;
        None when only SQLite can tell. A waiting long-poll's check on each commit."""
        return self._guard(
            lambda: self.storage.has_changes_in_memory(after, upto, query.tags, query.type)
        )

    def _page_result(self, query: ChangeQuery, page: ChangePage) -> PageResult:
        # The page's own compaction point, not the storage's current one: it dates the
        # page's atStart (`KnownPrefix.first_retained`).
        return PageResult(
            bodies=page.bodies,
            at_start=page.at_start,
            at_end=page.at_end,
            first_retained=page.compacted_through + 1,
            missed=query.since < page.compacted_through,
        )

    def _guard(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except CorruptionError as error:
            self._replica.fail("reading stored changes", error)
            raise DataCorrupted(
                f"this node found corrupted data and stopped serving it ({error}); "
                "read from another node"
            ) from None


def _resume_point(query: ChangeQuery, known: KnownPrefix | None) -> tuple[int, KnownAtStart | None]:
    """Where a read of `query` starts, and the atStart it may take as known."""
    if known is None:
        return query.since, None
    at_start = None
    if known.at_start is not None:
        at_start = KnownAtStart(known.at_start, known.first_retained - 1)
    return known.resume_after(query), at_start
