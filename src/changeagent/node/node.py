"""The node runtime: turns proposals into durable, committed, applied log entries.

Today a node is standalone: a one-member cluster whose commit point is its own
durable log. The shape is the Raft runtime's (propose -> persist in one group
commit -> commit -> apply -> wake waiters), so the clustering work swaps the
commit rule, not the node. Like a Raft leader, every start begins a new term
with a no-op entry, so the first change on a fresh node is `_id` 2, as in
ChangeAgent.

Everything here runs on one asyncio loop; disk work happens in storage's writer
thread (writes) or a worker thread (cold reads), never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from changeagent.change import NewChange, encode_change
from changeagent.config import Settings, write_settings_file
from changeagent.node.errors import CommitTimeout, DataCorrupted, NotAvailable, Overloaded
from changeagent.node.query import ChangeQuery, PageResult
from changeagent.node.settings_entry import (
    decode_purge,
    decode_settings,
    encode_purge,
    encode_settings,
)
from changeagent.node.waiters import CommitWaiters
from changeagent.node.webhooks import WebHookCaller
from changeagent.raft.entry import (
    ENTRY_TYPE_CONFIG,
    ENTRY_TYPE_NOOP,
    ENTRY_TYPE_PURGE,
    Entry,
    HardState,
)
from changeagent.raft.interfaces import Snapshot
from changeagent.storage import ChangePage, CorruptionError, Storage, StorageFailed, WriteBatch

log = logging.getLogger(__name__)
T = TypeVar("T")

META_NODE_ID = "node_id"
NODE_ID_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """Per-node limits (not replicated). Validated by the CLI before the node starts."""

    limit_default: int = 100
    limit_max: int = 10_000
    block_max_s: float = 600.0
    body_bytes_max: int = 1024 * 1024
    idempotency_key_bytes_max: int = 256
    pending_proposals_max: int = 100_000
    commit_timeout_s: float = 30.0
    purge_interval_s: float = 1.0


@dataclass(slots=True)
class _Proposal:
    entry: Entry
    future: asyncio.Future[int]


class Node:
    """One changeagent node: the change log, its settings, and its long-polls."""

    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        settings_path: Path | None,
        limits: NodeLimits,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.settings_path = settings_path
        self.limits = limits
        self._clock_ns = clock_ns
        self.node_id = _load_node_id(storage)
        self.cluster_id = 0
        hard_state = storage.hard_state()
        self.term = hard_state.term
        self.commit_index = storage.last_index()  # one member: durable means committed
        self.applied_index = self.commit_index
        self._last_index = self.commit_index
        self._last_timestamp_ns = 0
        self._pending: list[_Proposal] = []
        self._inflight_keys: dict[str, asyncio.Future[int]] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self._waiters = CommitWaiters(self._read_committed)
        self._web_hooks = WebHookCaller()
        self.failure: str | None = None
        self.closing = False
        self.purge_checks = 0  # how many times the purge rule was evaluated (diagnostics)

    @property
    def state(self) -> str:
        return "Standalone"

    @property
    def long_poll_count(self) -> int:
        return len(self._waiters)

    # Lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Begin a new term with a no-op entry, like a newly elected leader."""
        self.term += 1
        meta = {META_NODE_ID: str(self.node_id).encode()}
        await self.storage.write(WriteBatch(hard_state=self._hard_state(), meta=meta))
        await self._propose(ENTRY_TYPE_NOOP, b"")
        self._purge_task = asyncio.create_task(self._purge_loop(), name="purge")

    async def close(self) -> None:
        """Answer long-polls now, finish pending writes, stop background work."""
        self.closing = True
        self._waiters.close()
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge_task
        if self._flush_task is not None:
            with contextlib.suppress(Exception):
                await self._flush_task
        await self._web_hooks.close()

    # Writes ------------------------------------------------------------------

    async def append_change(self, change: NewChange, key: str = "") -> bytes:
        """Store a change durably; return its stored bytes. Retries with `key` get the original."""
        if key:
            existing = await self._existing_for_key(key)
            if existing is not None:
                return existing
        self._check_writable()
        await self._web_hooks.validate(self.settings.web_hooks, change)
        timestamp_ns = self._next_timestamp_ns()
        entry = await self._propose(
            change.type, lambda index: encode_change(index, timestamp_ns, change), key
        )
        return entry.data

    async def update_settings(self, settings: Settings) -> Settings:
        """Replicate new settings through the log; they apply when committed."""
        await self._propose(ENTRY_TYPE_CONFIG, encode_settings(settings.validate()))
        return self.settings

    async def _existing_for_key(self, key: str) -> bytes | None:
        inflight = self._inflight_keys.get(key)
        if inflight is not None:
            return self.storage.get_change(await asyncio.shield(inflight))
        stored_index = self.storage.idempotency_lookup(key)
        return None if stored_index is None else self.storage.get_change(stored_index)

    async def _propose(
        self, entry_type: int, data: bytes | Callable[[int], bytes], key: str = ""
    ) -> Entry:
        """Append one entry; return it once it is durable, committed and applied."""
        self._check_writable()
        if len(self._pending) >= self.limits.pending_proposals_max:
            raise Overloaded("too many writes are waiting to be stored; retry later")
        index = self._last_index + 1
        payload = data(index) if callable(data) else data
        self._last_index = index
        proposal = _Proposal(
            entry=Entry(index=index, term=self.term, type=entry_type, data=payload, key=key),
            future=asyncio.get_running_loop().create_future(),
        )
        self._pending.append(proposal)
        if key:
            self._inflight_keys[key] = proposal.future
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush(), name="flush")
        try:
            await asyncio.wait_for(asyncio.shield(proposal.future), self.limits.commit_timeout_s)
            return proposal.entry
        except TimeoutError:
            raise CommitTimeout(
                "the change was not committed in time; it may still commit. "
                "Retry with the same Idempotency-Key to get it exactly once"
            ) from None
        finally:
            if key and proposal.future.done():
                self._inflight_keys.pop(key, None)

    def _check_writable(self) -> None:
        if self.failure is not None:
            raise NotAvailable(f"this node stopped taking writes: {self.failure}")
        if self.closing:
            raise NotAvailable("this node is shutting down", retry_after_s=1)

    async def _flush(self) -> None:
        """Group commit: everything proposed while a write runs rides the next one."""
        while self._pending and self.failure is None:
            batch, self._pending = self._pending, []
            entries = [proposal.entry for proposal in batch]
            commit_index = entries[-1].index
            hard_state = HardState(term=self.term, vote=self.node_id, commit=commit_index)
            try:
                await self.storage.write(WriteBatch(hard_state=hard_state, entries=entries))
            except (StorageFailed, OSError) as error:
                self._fail(f"storage write failed: {error}")
                _reject(batch, self.failure or "storage failed")
                break
            self.commit_index = commit_index
            await self._apply(entries)
            for proposal in batch:
                if not proposal.future.done():
                    proposal.future.set_result(proposal.entry.index)
            self._waiters.notify(commit_index)
        if self.failure is not None:
            batch, self._pending = self._pending, []
            _reject(batch, self.failure)

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log.error("node is failing stop for writes: %s", reason)

    # Applying committed internal entries --------------------------------------

    async def _apply(self, entries: list[Entry]) -> None:
        for entry in entries:
            if entry.type == ENTRY_TYPE_CONFIG:
                await self._apply_settings(decode_settings(entry.data))
            elif entry.type == ENTRY_TYPE_PURGE:
                await self._apply_purge(decode_purge(entry.data))
            self.applied_index = entry.index

    async def _apply_settings(self, settings: Settings) -> None:
        self.settings = settings
        if self.settings_path is not None:
            try:
                await asyncio.to_thread(write_settings_file, self.settings_path, settings)
            except OSError as error:
                log.error("could not rewrite %s: %s", self.settings_path, error)

    async def _apply_purge(self, index: int) -> None:
        snapshot = self.storage.snapshot()
        if index <= snapshot.index:
            return
        term = self.storage.term(index)
        compacted = Snapshot(
            index=index,
            term=term,
            membership=snapshot.membership,
            data=encode_settings(self.settings),
        )
        try:
            await self.storage.write(WriteBatch(snapshot=compacted, compact_to=index))
        except (StorageFailed, OSError) as error:
            self._fail(f"purge failed: {error}")

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.purge_interval_s)
            self.purge_checks += 1
            settings = self.settings
            if not settings.purge_enabled or self.failure or self.closing:
                continue
            cutoff_ns = self._clock_ns() - settings.min_purge_duration_ns
            point = await asyncio.to_thread(
                self.storage.purge_point,
                settings.min_purge_records,
                cutoff_ns,
                self.commit_index,
            )
            if point > self.storage.snapshot().index:
                with contextlib.suppress(NotAvailable, CommitTimeout, Overloaded):
                    await self._propose(ENTRY_TYPE_PURGE, encode_purge(point))

    # Reads -------------------------------------------------------------------

    async def read_changes(self, query: ChangeQuery) -> PageResult:
        """Committed changes after `query.since`: from memory on the loop when the hot
        tail can answer (consumers near the end), else from SQLite in a worker thread."""
        return await self._read_upto(query, self.commit_index)

    async def _read_upto(self, query: ChangeQuery, upto: int) -> PageResult:
        page = self._read_in_memory(query, upto)
        if page is not None:
            return page
        return await asyncio.to_thread(self._read_committed, query, upto)

    async def wait_changes(self, query: ChangeQuery, block_s: float) -> PageResult:
        """Like read_changes, but wait up to `block_s` for a matching change to commit."""
        deadline = asyncio.get_running_loop().time() + block_s
        upto = self.commit_index
        page = await self._read_upto(query, upto)
        # A commit may land while a cold read runs in a thread, before this request is
        # registered as a waiter: read again until the read covers the commit index,
        # then register with no await in between, so no wake-up can be missed.
        while not page.bodies and upto < self.commit_index:
            upto = self.commit_index
            page = await self._read_upto(query, upto)
        remaining_s = deadline - asyncio.get_running_loop().time()
        if page.bodies or remaining_s <= 0 or self.closing:
            return page
        woken = await self._waiters.wait(query, upto, remaining_s)
        if woken is not None:
            return woken
        return await self.read_changes(query)

    def get_change(self, index: int) -> bytes | None:
        if index > self.commit_index:
            return None
        return self._guard(lambda: self.storage.get_change(index))

    def _read_committed(self, query: ChangeQuery, upto: int) -> PageResult:
        page = self._guard(
            lambda: self.storage.read_changes(
                since=query.since, limit=query.limit, tags=query.tags, type=query.type, upto=upto
            )
        )
        return self._page_result(query, page)

    def _read_in_memory(self, query: ChangeQuery, upto: int) -> PageResult | None:
        page = self._guard(
            lambda: self.storage.read_changes_in_memory(
                since=query.since, limit=query.limit, tags=query.tags, type=query.type, upto=upto
            )
        )
        return None if page is None else self._page_result(query, page)

    def _page_result(self, query: ChangeQuery, page: ChangePage) -> PageResult:
        first_index = self.storage.first_index()
        return PageResult(
            bodies=page.bodies,
            at_start=page.at_start,
            at_end=page.at_end,
            first_retained=first_index,
            missed=query.since < first_index - 1,
        )

    def _guard(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except CorruptionError as error:
            self._fail(f"data corrupted: {error}")
            raise DataCorrupted(
                f"this node found corrupted data and stopped serving it ({error}); "
                "read from another node"
            ) from None

    # Helpers -----------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.node_id, commit=self.commit_index)

    def _next_timestamp_ns(self) -> int:
        # Never go backwards, even if the wall clock does: _ts is informational,
        # but consumers find a monotonic timestamp less surprising.
        self._last_timestamp_ns = max(self._clock_ns(), self._last_timestamp_ns + 1)
        return self._last_timestamp_ns


def _reject(batch: list[_Proposal], reason: str) -> None:
    for proposal in batch:
        if not proposal.future.done():
            proposal.future.set_exception(NotAvailable(f"the write was not stored: {reason}"))
            proposal.future.exception()  # mark retrieved: a timed-out caller may be gone


def _load_node_id(storage: Storage) -> int:
    """The stored id, or a new random one that `start` persists."""
    stored = storage.meta_get(META_NODE_ID)
    if stored is not None:
        return int(stored)
    return secrets.randbelow(NODE_ID_MAX) + 1
