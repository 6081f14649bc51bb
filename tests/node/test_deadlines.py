"""Deadlines on their own: items expire once, never before their time, not at all
once removed, in buckets under one loop timer; and CommitWaiters' timeouts use it
(no loop timer per waiting long-poll)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from changeagent.node.deadlines import EARLY_S, Deadlines
from changeagent.node.query import ChangeQuery, PageResult
from changeagent.node.waiters import CommitWaiters

WAIT_S = 10.0  # the longest any condition below may take


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), WAIT_S))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def record_timers(loop: asyncio.AbstractEventLoop, fire: Any = None) -> list[float]:
    """When each loop timer made from now on is due (`call_later` goes through
    `call_at`); with `fire`, only the timers that call it (not the test's sleeps)."""
    timers: list[float] = []
    call_at = loop.call_at

    def recording_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if fire is None or callback == fire:
            timers.append(when)
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = recording_call_at  # type: ignore[method-assign,assignment]
    return timers


def test_items_expire_once_not_before_their_deadline_and_not_after_removal() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        expired: dict[str, float] = {}
        deadlines: Deadlines[str] = Deadlines(lambda item: expired.setdefault(item, loop.time()))
        now = loop.time()
        at = {"a": now + 0.03, "b": now + 0.01, "c": now + 0.05, "gone": now + 0.02}
        keys = {item: deadlines.add(item, deadline) for item, deadline in at.items()}
        deadlines.remove("gone", keys["gone"])
        deadlines.remove("gone", keys["gone"])  # twice: nothing
        await until(lambda: len(expired) == 3)
        assert set(expired) == {"a", "b", "c"}
        for item, when in expired.items():
            assert when >= at[item] - EARLY_S, item
        assert sorted(expired, key=expired.__getitem__) == ["b", "a", "c"]
        deadlines.remove("a", keys["a"])  # after it expired: nothing
        assert len(deadlines) == 0

    run(scenario)


def test_one_loop_timer_for_many_items_and_an_earlier_item_rearms_it() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        expired: list[int] = []
        deadlines: Deadlines[int] = Deadlines(expired.append)
        timers = record_timers(loop, deadlines._fire)
        now = loop.time()
        for item in range(1000):  # all within one bucket of 10 ms: one timer
            deadlines.add(item, now + 60 + item * 0.00001)
        assert len(timers) == 1
        deadlines.add(-1, now + 0.02)  # earlier: armed again, for it
        assert len(timers) == 2 and timers[-1] < timers[0]
        await until(lambda: expired == [-1])
        assert len(deadlines) == 1000
        deadlines.close()
        assert len(deadlines) == 0

    run(scenario)


def test_buckets_emptied_by_removal_do_not_wake_the_loop() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        expired: list[str] = []
        deadlines: Deadlines[str] = Deadlines(expired.append)
        now = loop.time()
        first = deadlines.add("first", now + 0.01)
        for _ in range(50):  # woken waiters come back: add, remove, add...
            key = deadlines.add("again", now + 0.5)
            deadlines.remove("again", key)
        deadlines.add("last", now + 0.03)
        deadlines.remove("first", first)
        await until(lambda: expired == ["last"])
        assert len(deadlines._numbers) == 0 and len(deadlines._queued) == 0

    run(scenario)


def test_commit_waiters_time_out_without_a_timer_each() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        timers = record_timers(loop)  # while the long-polls wait (no sleeps meanwhile)

        def never(*_: object) -> PageResult:
            raise AssertionError("no commit: nothing is read")

        waiters = CommitWaiters(lambda *_: False, never, never)
        started = loop.time()
        pages = await asyncio.gather(
            *(waiters.wait(ChangeQuery(since=0), 0, 0.05) for _ in range(500))
        )
        assert pages == [None] * 500
        assert loop.time() - started >= 0.05 - EARLY_S
        assert len(timers) <= 2  # one bucket; at most armed again once
        assert len(waiters) == 0

    run(scenario)
