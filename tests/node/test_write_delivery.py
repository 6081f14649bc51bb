"""A write answered from the Ready loop: `on_applied` is called once with the
applied entry before the writer's coroutine returns, never for a keyed write; and
`WriteDelivery` writes exactly the answer aiohttp would, once, and nothing after
its handler stopped waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from changeagent.api.wire import WriteDelivery, json_200
from changeagent.change import parse_change_body
from changeagent.node.node import Node
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
