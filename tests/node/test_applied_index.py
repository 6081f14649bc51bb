"""AppliedIndex: waits for an applied index, and the watch a forwarded write's
answer is written from (called inside `advance`, before any waiter resumes)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from changeagent.node.applied import AppliedIndex
from changeagent.node.errors import CommitTimeout, NotAvailable


def test_a_watch_runs_inside_advance_once_before_the_waiter_resumes() -> None:
    async def scenario() -> list[str]:
        events: list[str] = []
        applied = AppliedIndex(3)

        async def waiter() -> None:
            await applied.wait(5, 10)
            events.append("resumed")

        applied.watch(5, lambda: events.append("hook"))
        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        applied.advance(4)
        events.append("advanced to 4")
        applied.advance(6)
        events.append("advanced to 6")
        applied.advance(7)
        await task
        return events

    assert asyncio.run(scenario()) == ["advanced to 4", "hook", "advanced to 6", "resumed"]


def test_a_wait_ends_when_applied_already_timed_out_or_refused() -> None:
    async def scenario() -> None:
        applied = AppliedIndex(5)
        await applied.wait(5, 10)
        with pytest.raises(CommitTimeout):
            await applied.wait(6, 0.01)
        applied.advance(6)  # the timed-out waiter is gone: advancing past it is fine

        async def refused() -> None:
            await applied.wait(9, 10)

        task = asyncio.create_task(refused())
        await asyncio.sleep(0)
        applied.refuse("stopping")
        with pytest.raises(NotAvailable):
            await task
        applied.advance(9)

    asyncio.run(scenario())


def test_a_failing_hook_is_logged_and_the_waiter_still_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> None:
        raise RuntimeError("broken hook")

    async def scenario() -> None:
        applied = AppliedIndex(0)
        applied.watch(1, broken)
        task = asyncio.create_task(applied.wait(1, 10))
        await asyncio.sleep(0)
        applied.advance(1)
        await task

    with caplog.at_level(logging.ERROR, logger="changeagent.node.applied"):
        asyncio.run(scenario())
    assert "applied-index hook failed" in caplog.text


def test_a_watch_runs_inside_advance_or_at_once_and_never_after_refusal() -> None:
    applied = AppliedIndex(3)
    calls: list[str] = []
    applied.watch(2, lambda: calls.append("already"))  # applied: at once
    assert calls == ["already"]
    applied.watch(5, lambda: calls.append("five"))
    applied.watch(4, lambda: calls.append("four"))
    applied.advance(4)
    assert calls == ["already", "four"]
    applied.advance(6)
    applied.advance(7)
    assert calls == ["already", "four", "five"]  # once each
    applied.watch(9, lambda: calls.append("nine"))
    applied.refuse("stopped")
    applied.advance(10)
    applied.watch(1, lambda: calls.append("after refusal"))
    assert calls == ["already", "four", "five"]
