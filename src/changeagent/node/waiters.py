"""Long-polls waiting for matching commits.

Waiters are grouped by their query (since, tags, type, limit): consumers at the
tail usually ask the same question, so one read — and one encoded response —
answers the whole group when a matching change commits. A group whose filter
matched nothing in a commit remembers how far it has checked (and its atStart:
`KnownPrefix`), so the next commit only looks at the new entries.

What one commit costs the event loop is bounded, whatever the filters: per group,
a look at the new entries in the hot tail (at most TAIL_SCAN_ENTRIES_MAX of them,
never SQLite), and for a group they wake, its page from the tail (at most
max(TAIL_SCAN_ENTRIES_MAX, limit + 1) entries, atStart from `KnownPrefix`).
Anything more — new entries no longer in the tail or too many of them, a sparse
page, an atStart that a purge made stale — is one read in a worker thread for the
group, which covers every commit up to then; the group waits for it instead of
checking again, so a heavy read is done once, not once per commit.

Waking is the hot path of fan-out (1,000 consumers woken by one commit), so each
waiter costs one future and an entry in the shared deadlines (`node/deadlines.py`:
one loop timer for all, not one each), and `notify` wakes it with one
`set_result`: no `asyncio.wait`, no shared future with a callback per waiter.

A waiter may also carry a *delivery hook* (`wait(..., hook=...)`): `notify` (or, for
a group woken by a worker-thread read, the loop callback that takes its result)
calls it synchronously with the page, before any task resumes, so the API can
write a prebuilt HTTP response straight to the consumer's socket. The task still
wakes afterwards (to finish the request's bookkeeping); the hook's return value
tells it whether the answer is already out. A stream's hook may instead answer
KEEP: it wrote the page and goes on waiting, after the page's last change. Such
waiters move together into the group of that next query without their tasks
waking, so a commit costs 1,000 streams at the tail one page, one frame and 1,000
socket writes, and no task switch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from changeagent.node.deadlines import Deadlines
from changeagent.node.query import ChangeQuery, KnownPrefix, PageResult

log = logging.getLogger(__name__)

# probe(query, after, upto): whether a change in (after, upto] matches, from memory with
# bounded work; None when memory cannot tell cheaply.
ProbeFunction = Callable[[ChangeQuery, int, int], bool | None]
# read_in_memory(query, upto, known): the page, from memory with bounded work, or None.
InMemoryReadFunction = Callable[[ChangeQuery, int, KnownPrefix], PageResult | None]
# read(query, upto, known): the page (empty if nothing new matches); blocking: a thread.
ReadFunction = Callable[[ChangeQuery, int, KnownPrefix], PageResult]


class Keep:
    """A delivery hook's answer: delivered, and the waiter goes on waiting after the
    page's last change (a stream), instead of resuming."""


KEEP = Keep()
# Called on the event loop, before the waiter resumes, with the page that wakes it.
# Returns True when it delivered the page itself, KEEP when it did and waits on.
# Must be quick and must not raise.
DeliveryHook = Callable[[PageResult], "bool | Keep"]


@dataclass(slots=True, eq=False)  # hashed by identity: a dict key in its group
class Waiter:
    """One registered long-poll: its future gets the page that wakes it, or None."""

    future: asyncio.Future[PageResult | None]
    hook: DeliveryHook | None
    group: _Group  # where it waits now (a kept waiter moves on)
    deadline: int = 0  # its key in `Deadlines`


@dataclass(slots=True)
class _Group:
    query: ChangeQuery
    known: KnownPrefix
    # Insertion-ordered: consumers are woken first come, first served; O(1) removal.
    waiters: dict[Waiter, None] = field(default_factory=dict)
    reading: bool = False  # a worker-thread read is under way; notify leaves the group be


class CommitWaiters:
    """Wakes long-polls whose query matches a newly committed change."""

    def __init__(
        self, probe: ProbeFunction, read_in_memory: InMemoryReadFunction, read: ReadFunction
    ) -> None:
        self._probe = probe
        self._read_in_memory = read_in_memory
        self._read = read
        self._groups: dict[ChangeQuery, _Group] = {}
        self._deadlines: Deadlines[Waiter] = Deadlines(_expire)  # one timer for all
        self._commit_index = 0  # the last one notified
        self._reads: set[asyncio.Task[None]] = set()
        self._closed = False
        self.delivered = 0  # pages written by delivery hooks (diagnostics, tests)
        self.thread_reads = 0  # group reads sent to a worker thread (diagnostics, tests)

    def __len__(self) -> int:
        return sum(len(group.waiters) for group in self._groups.values())

    async def wait(
        self,
        query: ChangeQuery,
        known: KnownPrefix | int,
        timeout_s: float,
        hook: DeliveryHook | None = None,
    ) -> PageResult | None:
        """Wait until a change matching `query` commits; None on timeout or close.
        (`register`, the future, `unregister`; callers that keep thousands of
        requests waiting use those themselves, a coroutine frame less each.)"""
        waiter = self.register(query, known, timeout_s, hook)
        if waiter is None:
            return None
        try:
            return await waiter.future
        finally:
            self.unregister(waiter)

    def register(
        self,
        query: ChangeQuery,
        known: KnownPrefix | int,
        timeout_s: float,
        hook: DeliveryHook | None = None,
    ) -> Waiter | None:
        """A waiter whose future gets the page once a change matching `query`
        commits, or None after `timeout_s` or at close; None if already closed.
        The caller must `unregister` it once the future is done or abandoned.

        `known` is what the caller's read found (or just how far it read): nothing
        in (query.since, known.scanned_upto] matches. `hook`, if given, is called
        with the page before the future's owner resumes (an argument, not a context
        variable: setting one costs every waiting request a context and a token).
        """
        if self._closed:
            return None
        group = self._groups.get(query)
        if group is None:
            if isinstance(known, int):
                known = KnownPrefix(known)
            group = _Group(query=query, known=known)
            self._groups[query] = group
        loop = asyncio.get_running_loop()
        waiter = Waiter(loop.create_future(), hook, group)
        group.waiters[waiter] = None
        waiter.deadline = self._deadlines.add(waiter, loop.time() + timeout_s)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        self._deadlines.remove(waiter, waiter.deadline)
        # Still registered after a timeout or a cancel; a woken group is gone.
        group = waiter.group
        registered = group.waiters.pop(waiter, 0) is None
        if registered and not group.waiters and self._groups.get(group.query) is group:
            del self._groups[group.query]

    def notify(self, commit_index: int) -> None:
        """Called on the event loop each time the commit index advances.

        Bounded work per group (see the module docstring): never a SQLite read.
        """
        self._commit_index = commit_index
        woken: list[tuple[_Group, PageResult]] = []
        for group in list(self._groups.values()):
            if group.reading or group.known.scanned_upto >= commit_index:
                continue
            page = self._check_in_memory(group, commit_index)
            if page is not None:
                del self._groups[group.query]
                woken.append((group, page))
        for group, page in woken:
            self._wake(group, page, commit_index)

    def close(self) -> None:
        """Answer every waiter now (shutdown): each then returns what it has."""
        self._closed = True
        self._deadlines.close()
        for task in list(self._reads):
            task.cancel()
        groups, self._groups = self._groups, {}
        for group in groups.values():
            self._answer_none(group)

    def _check_in_memory(self, group: _Group, upto: int) -> PageResult | None:
        """The page that wakes `group`, if memory can tell with bounded work; None if
        nothing new matches, or if a worker-thread read was started to find out."""
        query, known = group.query, group.known
        found = self._probe(query, known.resume_after(query), upto)
        if found is False:
            group.known = replace(known, scanned_upto=upto)
            return None
        if found:
            page = self._read_in_memory(query, upto, known)
            if page is not None:
                if page.bodies:
                    return page
                group.known = replace(known, scanned_upto=upto)  # limit=0: nothing to show
                return None
        self._read_in_thread(group, upto)
        return None

    def _read_in_thread(self, group: _Group, upto: int) -> None:
        group.reading = True
        self.thread_reads += 1
        task = asyncio.get_running_loop().create_task(self._thread_read(group, upto))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _thread_read(self, group: _Group, upto: int) -> None:
        query = group.query
        try:
            page = await asyncio.to_thread(self._read, query, upto, group.known)
        except Exception:  # corruption, a closed storage: each waiter reads for itself
            log.warning("a long-poll read failed; its waiters answer on their own", exc_info=True)
            if self._groups.get(query) is group:
                del self._groups[query]
                self._answer_none(group)
            return
        finally:
            group.reading = False
        if self._groups.get(query) is group:  # else every waiter left meanwhile, or closed
            self._take_thread_read(group, page, upto)

    def _take_thread_read(self, group: _Group, page: PageResult, upto: int) -> None:
        if not page.bodies:
            group.known = KnownPrefix.after_read(group.query, page, upto)
            if self._commit_index <= upto:
                return
            # Commits landed during the read: check them now, as notify would have.
            upto = self._commit_index
            new_page = self._check_in_memory(group, upto)
            if new_page is None:
                return
            page = new_page
        del self._groups[group.query]
        self._wake(group, page, upto)

    def _wake(self, group: _Group, page: PageResult, upto: int) -> None:
        """Answer the group with `page` (read up to `upto`); kept waiters move on."""
        waiters, group.waiters = group.waiters, {}
        kept: list[Waiter] = []
        for waiter in waiters:
            if waiter.future.done():  # timed out or cancelled, not resumed yet
                continue
            delivered = self._deliver(waiter.hook, page) if waiter.hook is not None else False
            if delivered:
                self.delivered += 1
            if delivered is KEEP:
                kept.append(waiter)
            else:
                waiter.future.set_result(page)
        if kept:
            self._keep_waiting(group.query, page, upto, kept)

    def _keep_waiting(
        self, query: ChangeQuery, page: PageResult, upto: int, kept: list[Waiter]
    ) -> None:
        """Register `kept` for what comes after `page`: no change in (its last id,
        upto] matches unless the page was full, and atStart is false from then on."""
        since = page.last_id()
        scanned_upto = since if len(page.bodies) >= query.limit else upto
        next_query = replace(query, since=since)
        group = self._groups.get(next_query)
        if group is None:
            known = KnownPrefix(scanned_upto, False, page.first_retained)
            group = _Group(query=next_query, known=known)
            self._groups[next_query] = group
        for waiter in kept:
            waiter.group = group
            group.waiters[waiter] = None
        # A full page left matching changes behind it: answer them now, not at the
        # next commit.
        if not group.reading and group.known.scanned_upto < self._commit_index:
            next_page = self._check_in_memory(group, self._commit_index)
            if next_page is not None:
                del self._groups[next_query]
                self._wake(group, next_page, self._commit_index)

    @staticmethod
    def _answer_none(group: _Group) -> None:
        waiters, group.waiters = group.waiters, {}
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_result(None)

    @staticmethod
    def _deliver(hook: DeliveryHook, page: PageResult) -> bool | Keep:
        try:
            return hook(page)
        except Exception:  # a broken hook must not stop the other wake-ups
            log.exception("long-poll delivery hook failed; the request answers normally")
            return False


def _expire(waiter: Waiter) -> None:
    if not waiter.future.done():
        waiter.future.set_result(None)
