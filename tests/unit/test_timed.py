"""wait_owned: a future of the caller's own, failed with the caller's error at the
deadline. wait_shielded: a shared future's outcome, or the caller's error after a
deadline; the future itself is never cancelled, by the deadline or by the caller."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from changeagent.timed import wait_owned, wait_shielded


class Late(Exception):
    pass


def late() -> Late:
    return Late("too late")


def test_result_exception_and_done_futures_pass_through() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, 7)
        assert await wait_shielded(future, 10, late) == 7
        assert await wait_shielded(future, 10, late) == 7  # done already
        failing: asyncio.Future[int] = loop.create_future()
        loop.call_soon(failing.set_exception, KeyError("k"))
        with pytest.raises(KeyError):
            await wait_shielded(failing, 10, late)

    asyncio.run(scenario())


def test_the_deadline_raises_the_callers_error_and_the_future_goes_on() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        with pytest.raises(Late):
            await wait_shielded(future, 0.01, late)
        assert not future.done()  # not cancelled: the write may still commit
        future.set_result(3)
        assert await wait_shielded(future, 10, late) == 3  # waiting again is safe

    asyncio.run(scenario())


def test_a_cancelled_caller_leaves_the_future_alone() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        caller = asyncio.create_task(wait_shielded(future, 10, late))
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert not future.done()
        future.set_result(1)

    asyncio.run(scenario())


def test_a_failure_after_the_caller_left_is_not_reported_as_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        with pytest.raises(Late):
            await wait_shielded(future, 0.01, late)
        future.set_exception(KeyError("after the deadline"))
        await asyncio.sleep(0)  # the done callback runs
        del future

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(scenario())
        gc.collect()
    assert "never retrieved" not in caplog.text


def test_the_timer_is_gone_once_the_future_is_done() -> None:
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
