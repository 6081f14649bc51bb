"""wait_owned: a future of the caller's own, failed with the caller's error at the
deadline. wait_shielded: a shared future's outcome, or the caller's error after a
deadline; the future itself is never cancelled, by the deadline or by the caller.
TimeoutGroup.wait: the same as wait_shielded for waits of one length, on one timer."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from changeagent.timed import TimeoutGroup, wait_owned, wait_shielded


class Late(Exception):
    pass


def late() -> Late:
    return Late("too late")


Wait = Callable[["asyncio.Future[Any]", float], Awaitable[Any]]
WAITS: dict[str, Wait] = {
    "wait_shielded": lambda future, timeout_s: wait_shielded(future, timeout_s, late),
    # A group of its own per call: the group's sharing is tested below.
    "group": lambda future, timeout_s: TimeoutGroup(timeout_s, late).wait(future),
}
both = pytest.mark.parametrize("wait", WAITS.values(), ids=list(WAITS))


@both
def test_result_exception_and_done_futures_pass_through(wait: Wait) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, 7)
        assert await wait(future, 10) == 7
        assert await wait(future, 10) == 7  # done already
        failing: asyncio.Future[int] = loop.create_future()
        loop.call_soon(failing.set_exception, KeyError("k"))
        with pytest.raises(KeyError):
            await wait(failing, 10)

    asyncio.run(scenario())


@both
def test_the_deadline_raises_the_callers_error_and_the_future_goes_on(wait: Wait) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        with pytest.raises(Late):
            await wait(future, 0.01)
        assert not future.done()  # not cancelled: the write may still commit
        future.set_result(3)
        assert await wait(future, 10) == 3  # waiting again is safe

    asyncio.run(scenario())


@both
def test_a_cancelled_caller_leaves_the_future_alone(wait: Wait) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        caller = asyncio.create_task(wait(future, 10))
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert not future.done()
        future.set_result(1)

    asyncio.run(scenario())


@both
def test_a_failure_after_the_caller_left_is_not_reported_as_unretrieved(
    wait: Wait, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        with pytest.raises(Late):
            await wait(future, 0.01)
        future.set_exception(KeyError("after the deadline"))
        await asyncio.sleep(0)  # the done callback runs
        del future

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(scenario())
        gc.collect()
    assert "never retrieved" not in caplog.text


def test_the_timer_is_gone_once_the_future_is_done() -> None:
    # (A group's one timer stays armed: see test_a_group_arms_one_timer_for_many_waits.)
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, 5)
        await wait_shielded(future, 3600, late)
        return len([handle for handle in loop._scheduled if not handle.cancelled()])  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == 0


def test_wait_owned_fails_the_future_itself_at_the_deadline() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        with pytest.raises(Late):
            await wait_owned(future, 0.01, late)
        assert future.done() and isinstance(future.exception(), Late)
        answered: asyncio.Future[int] = loop.create_future()
        loop.call_soon(answered.set_result, 4)
        assert await wait_owned(answered, 3600, late) == 4
        assert not [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_a_group_expires_its_waits_in_the_order_they_began_and_forgets_those_that_ended() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        group = TimeoutGroup(0.05, late)
        pending: asyncio.Future[int] = loop.create_future()
        first = asyncio.ensure_future(group.wait(pending))
        answered: asyncio.Future[int] = loop.create_future()
        settled = asyncio.ensure_future(group.wait(answered))
        await asyncio.sleep(0)
        assert len(group) == 2
        answered.set_result(9)
        assert await settled == 9
        assert len(group) == 1  # an ended wait leaves at once
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(group.wait(pending))  # its deadline 20 ms later
        with pytest.raises(Late):
            await first
        assert not second.done() and not pending.done()
        with pytest.raises(Late):
            await second
        assert len(group) == 0 and not pending.done()  # the shared future goes on
        pending.set_result(1)
        assert await group.wait(pending) == 1

    asyncio.run(scenario())


def test_a_group_arms_one_timer_for_many_waits() -> None:
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        armed = 0
        call_at = loop.call_at

        def counting(when: float, callback: Any, *arguments: Any) -> asyncio.TimerHandle:
            nonlocal armed
            armed += 1
            return call_at(when, callback, *arguments)

        loop.call_at = counting  # type: ignore[method-assign]
        group = TimeoutGroup(3600, late)
        for value in range(100):
            future: asyncio.Future[int] = loop.create_future()
            loop.call_soon(future.set_result, value)
            assert await group.wait(future) == value
        assert len(group) == 0
        return armed

    assert asyncio.run(scenario()) == 1


def test_a_group_moves_to_a_new_loop_once_its_waits_on_the_old_one_ended() -> None:
    group = TimeoutGroup(3600, late)

    async def answered(value: int) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.set_result, value)
        return await group.wait(future)

    assert asyncio.run(answered(1)) == 1  # its timer stays armed on that loop, now closed
    assert asyncio.run(answered(2)) == 2

    async def short(group: TimeoutGroup) -> None:
        with pytest.raises(Late):
            await group.wait(asyncio.get_running_loop().create_future())

    quick = TimeoutGroup(0.01, late)
    asyncio.run(short(quick))
    asyncio.run(short(quick))  # the timer of the new loop, not the closed one's


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, float("nan")])
def test_a_group_needs_a_positive_timeout(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        TimeoutGroup(timeout_s, late)
