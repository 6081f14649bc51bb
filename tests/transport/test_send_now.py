"""Frames written in the loop iteration that produced them (`start_now`,
`Connection.send_now`): the common case finishes at once, a write that must wait
for the socket to drain finishes in a task, and frames stay in order either way."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

import changeagent.transport.transport as transport_module
from changeagent.eager import start_now
from changeagent.raft import Entry, Message, MessageType
from tests.transport.harness import Node, run, started, stop_all

CARRIERS = ["tcp", "ws"]


def test_a_coroutine_that_does_not_suspend_finishes_in_the_call() -> None:
    done: list[str] = []

    async def write() -> None:
        done.append("written")

    async def scenario() -> None:
        assert start_now(write()) is None
        assert done == ["written"]  # before the call returned, no loop iteration

    run(scenario())


def test_a_coroutine_that_suspends_is_finished_by_a_task() -> None:
    steps: list[str] = []

    async def write(drained: asyncio.Future[int]) -> None:
        steps.append("handed to the socket")
        steps.append(f"drained {await drained}")

    async def scenario() -> None:
        drained: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = start_now(write(drained))
        assert task is not None
        assert steps == ["handed to the socket"]
        drained.set_result(7)
        await task
        assert steps == ["handed to the socket", "drained 7"]

    run(scenario())


def test_errors_surface_in_the_call_or_in_the_task() -> None:
    async def fails_at_once() -> None:
        raise ConnectionResetError("gone")

    async def fails_later(drained: asyncio.Future[None]) -> None:
        await drained
        raise ConnectionResetError("gone later")

    async def scenario() -> None:
        with pytest.raises(ConnectionResetError, match="gone"):
            start_now(fails_at_once())
        drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = start_now(fails_later(drained))
        assert task is not None
        drained.set_result(None)
        with pytest.raises(ConnectionResetError, match="gone later"):
            await task

    run(scenario())


def test_cancelling_the_task_reaches_the_suspended_coroutine() -> None:
    seen: list[str] = []

    async def write(drained: asyncio.Future[None]) -> None:
        try:
            await drained
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def scenario() -> None:
        drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = start_now(write(drained))
        assert task is not None
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["cancelled"]

    run(scenario())


def _append(index: int, size: int) -> Message:
    entry = Entry(index, 1, 0, bytes([index % 256]) * size)
    return Message(MessageType.APPEND, 1, 2, 1, index=index, entries=(entry,))


@pytest.mark.parametrize("carrier", CARRIERS)
def test_frames_stay_in_order_when_the_socket_buffer_fills(
    carrier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of 1 MiB messages: the first goes out at once and fills the socket's
    buffer (its write waits for the drain in a task), the rest queue behind it; every
    one arrives, in order, each counted once as sent."""
    count = 24
    drains: list[asyncio.Task[None]] = []

    def counting_start_now(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        task = start_now(coroutine)
        if task is not None:
            drains.append(task)
        return task

    monkeypatch.setattr(transport_module, "start_now", counting_start_now)

    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(Node(1, carrier, addresses), Node(2, carrier, addresses))
        try:
            a.transport.send(2, _append(0, 10))  # the link is up and idle
            assert (await b.next_message())[1].index == 0
            for index in range(1, count + 1):
                a.transport.send(2, _append(index, 1 << 20))
            for index in range(1, count + 1):
                received = (await b.next_message())[1]
                assert received.index == index
                assert received.entries[0].data == bytes([index % 256]) * (1 << 20)
            stats = a.transport.stats().peers[2]
            assert (stats.messages_sent, stats.messages_dropped) == (count + 1, 0)
            assert drains, "no write had to wait for a drain: the test proves nothing"
        finally:
            await stop_all([a, b])

    run(scenario())
