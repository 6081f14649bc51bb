"""The carriers' socket handling (`link_protocol`, `tcplink`, `wslink`): frames
handed over in the read callback, a batch in one write, a WebSocket peer's pings
and close, the dialer's checks of the upgrade, and aiohttp's server left with no
stale connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from changeagent.raft import Message, MessageType
from changeagent.transport.codec import FrameDecoder, encode_frame, encode_prefixed
from changeagent.transport.frames import Frame, Ping
from changeagent.transport.link_protocol import LinkStream
from changeagent.transport.streams import ConnectionClosed
from changeagent.transport.tcplink import TcpLinkProtocol
from changeagent.transport.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    WsFrameParser,
    encode_ws_frame,
)
from changeagent.transport.wslink import WebSocketDialer, WsLinkProtocol
from tests.transport.harness import Node, run, started, stop_all, wait_until


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def heartbeat(term: int) -> Message:
    return Message(type=MessageType.HEARTBEAT, source=1, target=2, term=term)


def accepting_protocol() -> tuple[WsLinkProtocol, FakeTransport]:
    protocol = WsLinkProtocol(1 << 20, dialer=False)
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


def masked(frame: Frame) -> bytes:
    return encode_ws_frame(encode_frame(frame), OP_BINARY, b"wxyz")


def test_frames_are_handed_over_in_the_read_callback_in_order() -> None:
    async def scenario() -> None:
        protocol, _ = accepting_protocol()
        protocol.data_received(masked(heartbeat(1)) + masked(heartbeat(2))[:5])
        seen: list[Frame] = []
        protocol.deliver_to(seen.append)  # what came before first
        assert seen == [heartbeat(1)]
        protocol.data_received(masked(heartbeat(2))[5:] + masked(heartbeat(3)))
        assert seen == [heartbeat(1), heartbeat(2), heartbeat(3)]  # no loop iteration

    run(scenario())


def test_a_batch_goes_out_in_one_write_masked_by_a_dialer_only() -> None:
    async def scenario() -> None:
        bodies = [encode_frame(heartbeat(1)), encode_frame(Ping())]
        for dialer in (True, False):
            protocol = WsLinkProtocol(1 << 20, dialer=dialer)
            transport = FakeTransport()
            protocol.connection_made(transport)
            await LinkStream(protocol, "peer").write_bodies(bodies)
            assert len(transport.writes) == 1
            parser = WsFrameParser(1 << 20, masked=dialer)
            assert parser.feed(transport.writes[0]) == [(OP_BINARY, body) for body in bodies]

    run(scenario())


def test_a_ping_is_answered_and_a_close_ends_the_stream() -> None:
    async def scenario() -> None:
        protocol, transport = accepting_protocol()
        stream = LinkStream(protocol, "peer")
        protocol.data_received(encode_ws_frame(b"are you there", OP_PING, b"abcd"))
        assert WsFrameParser(1000, masked=False).feed(transport.writes[-1]) == [
            (OP_PONG, b"are you there")
        ]
        protocol.data_received(encode_ws_frame(b"\x03\xe8", OP_CLOSE, b"abcd"))
        assert transport.closing
        assert WsFrameParser(1000, masked=False).feed(transport.writes[-1])[0][0] == OP_CLOSE
        protocol.connection_lost(None)
        with pytest.raises(ConnectionClosed, match="closed by the peer"):
            await stream.serve_frames(lambda frame: None)

    run(scenario())


def test_a_bug_in_dispatch_reaches_the_serving_task() -> None:
    async def scenario() -> None:
        protocol, transport = accepting_protocol()
        stream = LinkStream(protocol, "peer")

        def dispatch(frame: Frame) -> None:
            raise KeyError("a bug")

        serving = asyncio.ensure_future(stream.serve_frames(dispatch))
        await asyncio.sleep(0)
        protocol.data_received(masked(heartbeat(1)))
        assert transport.closing  # the connection is dropped at once
        protocol.connection_lost(None)
        with pytest.raises(KeyError, match="a bug"):
            await serving

    run(scenario())


async def answering_server(answer: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await reader.read()  # until the dialer hangs up
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "no WebSocket upgrade"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSBrZXk=\r\n\r\n",
            "Sec-WebSocket-Accept",
        ),
    ],
)
def test_the_dialer_checks_the_upgrade(answer: bytes, error: str) -> None:
    async def scenario() -> None:
        server, port = await answering_server(answer)
        try:
            with pytest.raises(ConnectionClosed, match=error):
                await WebSocketDialer().connect(f"127.0.0.1:{port}", 1 << 20)
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())


def test_aiohttp_forgets_a_link_once_it_closes() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(Node(1, "ws", addresses), Node(2, "ws", addresses))
        try:
            a.transport.send(2, heartbeat(1))
            await b.next_message()
            runner = b._runner
            assert runner is not None and runner.server is not None
            server = runner.server
            assert len(server.connections) == 1  # a's link, served by b's app
            await a.stop()
            await wait_until(lambda: not server.connections)
        finally:
            await stop_all([a, b])

    run(scenario())


def test_the_tcp_carrier_hands_frames_over_in_the_read_callback_and_batches_writes() -> None:
    async def scenario() -> None:
        protocol = TcpLinkProtocol(1 << 20)
        transport = FakeTransport()
        protocol.connection_made(transport)
        stream = encode_prefixed(heartbeat(1)) + encode_prefixed(heartbeat(2))
        protocol.data_received(stream[:7])
        seen: list[Frame] = []
        protocol.deliver_to(seen.append)
        assert seen == []
        protocol.data_received(stream[7:])
        assert seen == [heartbeat(1), heartbeat(2)]
        await LinkStream(protocol, "peer").write_bodies(
            [encode_frame(heartbeat(3)), encode_frame(Ping())]
        )
        assert len(transport.writes) == 1
        assert FrameDecoder().feed(transport.writes[0]) == [heartbeat(3), Ping()]

    run(scenario())


def tcp_protocol() -> tuple[TcpLinkProtocol, FakeTransport]:
    protocol = TcpLinkProtocol(1 << 20)
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


def test_writes_after_an_iterations_first_go_out_together_at_the_next() -> None:
    """The first write of a loop iteration goes at once (a lone request waits for
    nothing); what follows it in that iteration goes in one write, in order, at the
    start of the next; the iteration after that begins again."""

    async def scenario() -> None:
        protocol, transport = tcp_protocol()
        stream = LinkStream(protocol, "peer")
        for term in (1, 2, 3):
            await stream.write_bodies([encode_frame(heartbeat(term))])
        assert [FrameDecoder().feed(data) for data in transport.writes] == [[heartbeat(1)]]
        await asyncio.sleep(0)  # one iteration: the held writes' callback ran first
        assert [FrameDecoder().feed(data) for data in transport.writes] == [
            [heartbeat(1)],
            [heartbeat(2), heartbeat(3)],
        ]
        await asyncio.sleep(0)  # nothing was held: no write
        assert len(transport.writes) == 2
        await stream.write_bodies([encode_frame(heartbeat(4))])
        assert FrameDecoder().feed(transport.writes[-1]) == [heartbeat(4)]  # at once

    run(scenario())


def test_held_writes_go_at_once_past_the_limit_and_before_a_close() -> None:
    """More than the hold's limit goes to the socket at once (so a burst meets flow
    control as before); closing hands what is held to the socket first; a lost
    connection drops it."""

    async def scenario() -> None:
        protocol, transport = tcp_protocol()
        stream = LinkStream(protocol, "peer")
        large = Message(
            type=MessageType.HEARTBEAT, source=1, target=2, term=1, context=b"x" * 40_000
        )
        await stream.write_bodies([encode_frame(heartbeat(1))])
        await stream.write_bodies([encode_frame(large)])
        assert len(transport.writes) == 1  # held: under the limit
        await stream.write_bodies([encode_frame(large)])
        assert len(transport.writes) == 2  # over it: both large ones, at once
        assert FrameDecoder().feed(transport.writes[1]) == [large, large]
        await stream.write_bodies([encode_frame(heartbeat(2))])
        await stream.close()
        assert FrameDecoder().feed(transport.writes[-1]) == [heartbeat(2)]
        assert transport.closing

        protocol, transport = tcp_protocol()
        protocol.write(b"first")
        protocol.write(b"held")
        protocol.connection_lost(None)
        await asyncio.sleep(0)
        assert transport.writes == [b"first"]

    run(scenario())


def test_a_dial_given_up_during_the_upgrade_leaves_nothing_to_log() -> None:
    # A dial that timed out no longer awaits the upgrade; the connection's loss
    # then fails it, and asyncio would log that exception as never retrieved.
    async def scenario() -> None:
        protocol = WsLinkProtocol(1 << 20, dialer=True, upgrade_key="a2V5")
        protocol.connection_made(FakeTransport())
        protocol.data_received(b"HTTP/1.1 101 Switching")  # the answer never ends
        protocol.connection_lost(None)
        assert protocol.upgraded.done()
        assert not protocol.upgraded._log_traceback  # type: ignore[attr-defined]
        assert isinstance(protocol.upgraded.exception(), ConnectionClosed)

    run(scenario())
