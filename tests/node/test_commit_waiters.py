"""CommitWaiters on its own: grouping, one read per wake-up, checks of only the new
entries, worker-thread reads when memory cannot answer, timeouts, cancels, close,
and delivery hooks called before any waiter resumes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from changeagent.node.query import ChangeQuery, KnownPrefix, PageResult
from changeagent.node.waiters import KEEP, CommitWaiters, Keep

LONG_S = 600.0  # far beyond any test: only a wake-up, a close or a cancel ends these waits


def body(index: int) -> bytes:
    """A stored change's bytes as far as the waiters look: they begin `{"_id":N,`."""
    return b'{"_id":%d,"data":null}' % index


class Log:
    """A committed log of (index, tag) and the reads CommitWaiters needs over it, which
    record what they were asked. `in_memory = False` plays a log whose new entries are
    not in the hot tail: every check then needs a (worker-thread) read."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str]] = []
        self.probes: list[tuple[int, int]] = []  # (after, upto) of each in-memory check
        self.reads = 0  # pages read, from memory or in a thread
        self.thread_reads: list[tuple[int, int]] = []  # (after, upto)
        self.in_memory = True
        self.gate = threading.Event()  # thread reads wait for it
        self.gate.set()
        self.fail = False

    def commit(self, tag: str = "") -> int:
        index = len(self.entries) + 1
        self.entries.append((index, tag))
        return index

    def waiters(self) -> CommitWaiters:
        return CommitWaiters(self.probe, self.read_in_memory, self.read)

    def probe(self, query: ChangeQuery, after: int, upto: int) -> bool | None:
        self.probes.append((after, upto))
        return bool(self._matching(query, after, upto)) if self.in_memory else None

    def read_in_memory(
        self, query: ChangeQuery, upto: int, known: KnownPrefix
    ) -> PageResult | None:
        return self._page(query, upto, known) if self.in_memory else None

    def read(self, query: ChangeQuery, upto: int, known: KnownPrefix) -> PageResult:
        self.thread_reads.append((known.resume_after(query), upto))
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the read failed")
        return self._page(query, upto, known)

    def _page(self, query: ChangeQuery, upto: int, known: KnownPrefix) -> PageResult:
        self.reads += 1
        indices = self._matching(query, known.resume_after(query), upto)[: query.limit]
        bodies = [body(index) for index in indices]
        return PageResult(bodies, at_start=False, at_end=True, first_retained=1, missed=False)

    def _matching(self, query: ChangeQuery, after: int, upto: int) -> list[int]:
        return [
            index
            for index, tag in self.entries
            if after < index <= upto and (not query.tags or tag in query.tags)
        ]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


def test_one_read_answers_a_whole_group_with_one_shared_page() -> None:
    async def scenario() -> None:
        log = Log()
        waiters = log.waiters()
        query = ChangeQuery(since=0)
        tasks = [asyncio.create_task(waiters.wait(query, 0, LONG_S)) for _ in range(5)]
        await until(lambda: len(waiters) == 5)
        waiters.notify(log.commit())
        pages = await asyncio.gather(*tasks)
        assert log.reads == 1
        assert all(page is pages[0] for page in pages)
        assert pages[0] is not None and pages[0].bodies == [body(1)]
        assert len(waiters) == 0

    run(scenario)


def test_non_matching_commits_keep_the_wait_and_are_not_scanned_again() -> None:
    async def scenario() -> None:
        log = Log()
        waiters = log.waiters()
        task = asyncio.create_task(waiters.wait(ChangeQuery(since=0, tags=("a",)), 0, LONG_S))
        await until(lambda: len(waiters) == 1)
        waiters.notify(log.commit("b"))
        waiters.notify(log.commit("b"))
        assert not task.done() and len(waiters) == 1
        waiters.notify(log.commit("a"))
        page = await task
        assert page is not None and page.bodies == [body(3)]
        # Each commit checked only its own entry; one page read, for the wake-up.
        assert log.probes == [(0, 1), (1, 2), (2, 3)]
        assert log.reads == 1 and log.thread_reads == []

    run(scenario)


def test_timeout_answers_none_and_forgets_the_waiter() -> None:
    async def scenario() -> None:
        log = Log()
        waiters = log.waiters()
        assert await waiters.wait(ChangeQuery(since=0), 0, 0.01) is None
        assert len(waiters) == 0
        waiters.notify(log.commit())
        assert log.probes == [] and log.reads == 0  # no group left to read for

    run(scenario)


def test_cancelled_waiter_leaves_its_group_and_the_others_still_wake() -> None:
    async def scenario() -> None:
        log = Log()
        waiters = log.waiters()
        query = ChangeQuery(since=0)
        stays = asyncio.create_task(waiters.wait(query, 0, LONG_S))
        leaves = asyncio.create_task(waiters.wait(query, 0, LONG_S))
        await until(lambda: len(waiters) == 2)
        leaves.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaves
        assert len(waiters) == 1
        waiters.notify(log.commit())
        page = await stays
        assert page is not None and len(page.bodies) == 1

    run(scenario)


def test_close_answers_every_waiter_with_none_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        waiters = Log().waiters()
        tasks = [
            asyncio.create_task(waiters.wait(ChangeQuery(since=n), 0, LONG_S)) for n in range(3)
        ]
        await until(lambda: len(waiters) == 3)
        waiters.close()
        assert await asyncio.gather(*tasks) == [None, None, None]
        assert await waiters.wait(ChangeQuery(), 0, LONG_S) is None

    run(scenario)


def test_hooks_deliver_inside_notify_before_any_waiter_resumes() -> None:
    async def scenario() -> None:
        log = Log()
        waiters = log.waiters()
        delivered: list[tuple[int, PageResult]] = []
        resumed: list[int] = []

        async def consumer(number: int) -> None:
            def hook(page: PageResult) -> bool:
                delivered.append((number, page))
                return True

            page = await waiters.wait(ChangeQuery(since=0), 0, LONG_S, hook=hook)
            assert page is not None
            resumed.append(number)

        tasks = [asyncio.create_task(consumer(n)) for n in range(3)]
        await until(lambda: len(waiters) == 3)
        waiters.notify(log.commit())
        # Every hook ran inside notify, in arrival order, with the one shared page;
        # no consumer task has resumed yet.
        assert [number for number, _ in delivered] == [0, 1, 2]
        assert len({id(page) for _, page in delivered}) == 1
        assert resumed == [] and waiters.delivered == 3
        await asyncio.gather(*tasks)
        assert sorted(resumed) == [0, 1, 2]

    run(scenario)


def test_hook_is_not_called_for_a_timed_out_waiter_or_after_close() -> None:
    async def scenario() -> None:
        log = Log()
        waiters = log.waiters()
        calls: list[PageResult] = []

        def hook(page: PageResult) -> bool:
            calls.append(page)
            return True

        assert await waiters.wait(ChangeQuery(since=0), 0, 0.01, hook=hook) is None
        task = asyncio.create_task(waiters.wait(ChangeQuery(since=0), 0, LONG_S, hook=hook))
        await until(lambda: len(waiters) == 1)
        waiters.close()
        waiters.notify(log.commit())
        assert await task is None
        assert calls == []

    run(scenario)


def test_a_failing_or_declining_hook_still_wakes_its_waiter() -> None:
    async def scenario() -> None:
        log = Log()
        waiters = log.waiters()

        def broken(page: PageResult) -> bool:
            raise RuntimeError("broken hook")

        def declines(page: PageResult) -> bool:
            return False

        tasks = [
            asyncio.create_task(waiters.wait(ChangeQuery(since=0), 0, LONG_S, hook=hook))
            for hook in (broken, declines)
        ]
        await until(lambda: len(waiters) == 2)
        waiters.notify(log.commit())
        pages = await asyncio.gather(*tasks)
        assert all(page is not None and len(page.bodies) == 1 for page in pages)
        assert waiters.delivered == 0

    run(scenario)


def test_a_check_memory_cannot_answer_is_one_thread_read_whatever_the_commits() -> None:
    async def scenario() -> None:
        log = Log()
        log.in_memory = False
        log.gate.clear()
        waiters = log.waiters()
        delivered: list[PageResult] = []

        def hook(page: PageResult) -> bool:
            delivered.append(page)
            return True

        task = asyncio.create_task(
            waiters.wait(ChangeQuery(since=0, tags=("a",)), 0, LONG_S, hook=hook)
        )
        await until(lambda: len(waiters) == 1)
        for tag in ("b", "b", "a"):
            waiters.notify(log.commit(tag))
        await until(lambda: len(log.thread_reads) == 1)
        assert log.thread_reads == [(0, 1)]  # the later commits wait for this read
        log.gate.set()
        page = await task
        # One more read, for what committed during the first, found the change.
        assert log.thread_reads == [(0, 1), (1, 3)] and waiters.thread_reads == 2
        assert page is not None and page.bodies == [body(3)]
        assert delivered == [page] and waiters.delivered == 1

    run(scenario)


def test_a_failed_thread_read_answers_its_group_with_none() -> None:
    async def scenario() -> None:
        log = Log()
        log.in_memory = False
        log.fail = True
        waiters = log.waiters()
        task = asyncio.create_task(waiters.wait(ChangeQuery(since=0), 0, LONG_S))
        await until(lambda: len(waiters) == 1)
        waiters.notify(log.commit())
        assert await task is None  # the caller then reads for itself and reports the error
        assert len(waiters) == 0

    run(scenario)


def test_close_during_a_thread_read_answers_none_and_drops_the_read() -> None:
    async def scenario() -> None:
        log = Log()
        log.in_memory = False
        log.gate.clear()
        waiters = log.waiters()
        task = asyncio.create_task(waiters.wait(ChangeQuery(since=0), 0, LONG_S))
        await until(lambda: len(waiters) == 1)
        waiters.notify(log.commit())
        await until(lambda: len(log.thread_reads) == 1)
        waiters.close()
        assert await task is None
        log.gate.set()

    run(scenario)


def test_a_kept_waiter_moves_on_without_resuming_and_catches_up_past_a_full_page() -> None:
    """A stream's hook answers KEEP: it takes every commit after its position, each
    once and in order, while its task stays asleep; a full page (limit 2) is followed
    at once by the rest, not at the next commit."""

    async def test() -> None:
        log = Log()
        waiters = log.waiters()
        delivered: list[list[bytes]] = []

        def hook(page: PageResult) -> bool | Keep:
            delivered.append(list(page.bodies))
            return KEEP

        query = ChangeQuery(since=0, limit=2)
        waiting = asyncio.create_task(waiters.wait(query, 0, LONG_S, hook=hook))
        await until(lambda: len(waiters) == 1)
        waiters.notify(log.commit())
        for _ in range(3):
            log.commit()
        waiters.notify(4)
        assert delivered == [[body(1)], [body(2), body(3)], [body(4)]]
        assert not waiting.done() and len(waiters) == 1
        waiters.notify(log.commit())
        assert delivered[-1] == [body(5)] and not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert len(waiters) == 0

    run(test)
