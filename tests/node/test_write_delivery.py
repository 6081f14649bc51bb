"""A write answered from the Ready loop: `on_applied` is called once with the
applied entry before the writer's coroutine returns, never for a keyed write; and
`WriteDelivery` writes exactly the answer aiohttp would, once, and nothing after
its handler stopped waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from changeagent.api import changes
from changeagent.api.caching import PageCaching
from changeagent.api.context import STATE_KEY, ApiState
from changeagent.api.streams import StreamSlots
from changeagent.api.wire import WriteDelivery, json_200
from changeagent.change import parse_change_body
from changeagent.node.errors import CommitTimeout
from changeagent.node.node import Node, NodeLimits
from changeagent.raft import Entry
from tests.support.node import run_with_node


def test_on_applied_gets_the_entry_before_the_writer_resumes(tmp_path: Path) -> None:
    async def body(node: Node) -> None:
        calls: list[tuple[Entry, int]] = []

        def on_applied(entry: Entry) -> None:
            calls.append((entry, node.replica.applied.index))

        write = asyncio.ensure_future(
            node.append_change(parse_change_body(b'{"data":1}'), "", on_applied)
        )
        while not calls:
            assert not write.done()  # the hook comes first
            await asyncio.sleep(0.001)
        stored = await write
        ((entry, applied),) = calls
        assert entry.data == stored
        assert applied >= entry.index  # called once the change is applied: readable
        assert orjson.loads(stored)["_id"] == entry.index

    run_with_node(tmp_path, body)


def test_no_on_applied_for_a_keyed_write(tmp_path: Path) -> None:
    async def body(node: Node) -> None:
        calls: list[Entry] = []
        await node.append_change(parse_change_body(b'{"data":1}'), "key", calls.append)
        again = await node.append_change(parse_change_body(b'{"data":1}'), "key", calls.append)
        assert orjson.loads(again)["data"] == 1
        assert calls == []

    run_with_node(tmp_path, body)


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class FakeRequest:
    def __init__(self) -> None:
        self.transport = FakeTransport()


def entry(data: bytes) -> Entry:
    return Entry(1, 1, 0, data, "")


def test_write_delivery_writes_the_answer_once() -> None:
    request = FakeRequest()
    delivery = WriteDelivery(request)  # type: ignore[arg-type]
    delivery(entry(b'{"_id":1}'))
    delivery(entry(b'{"_id":1}'))
    assert delivery.sent
    assert request.transport.written == [json_200(b'{"_id":1}')]


def test_write_delivery_writes_nothing_once_closed_or_on_a_closing_connection() -> None:
    closed = FakeRequest()
    delivery = WriteDelivery(closed)  # type: ignore[arg-type]
    delivery.close()  # the handler stopped waiting (a timeout, an error)
    delivery(entry(b'{"_id":1}'))
    assert not delivery.sent and closed.transport.written == []

    closing = FakeRequest()
    closing.transport.closing = True
    delivery = WriteDelivery(closing)  # type: ignore[arg-type]
    delivery(entry(b'{"_id":1}'))
    assert not delivery.sent and closing.transport.written == []


class AnsweredThenTimedOut:
    """A node whose write is applied (the hook answers) and whose wait then fails, as
    when the commit timeout fires between the answer and the handler resuming."""

    limits = NodeLimits()

    async def append_change(self, change: Any, key: str, on_applied: Any) -> bytes:
        on_applied(entry(b'{"_id":7}'))
        raise CommitTimeout("the change was not committed in time")


def test_a_write_answered_from_the_ready_loop_is_never_answered_twice() -> None:
    async def scenario() -> None:
        app = web.Application()
        app[STATE_KEY] = ApiState(
            node=AnsweredThenTimedOut(),  # type: ignore[arg-type]
            prefix="",
            members=None,  # type: ignore[arg-type]
            metrics=None,  # type: ignore[arg-type]
            page_caching=PageCaching(),
            streams=StreamSlots(),
        )
        transport = FakeTransport()
        payload = StreamReader(
            mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop()
        )
        payload.feed_data(b'{"data":1}')
        payload.feed_eof()
        request = make_mocked_request(
            "POST",
            "/changes",
            headers={"Content-Type": "application/json"},
            app=app,
            transport=transport,
            payload=payload,
        )
        response = await changes.post_change(request)
        # The 200 went out from the hook; the handler's response only finishes the
        # bookkeeping (no 503 after it on the same connection).
        assert transport.written == [json_200(b'{"_id":7}')]
        assert response.status == 200 and response.body == b'{"_id":7}'

    asyncio.run(scenario())
