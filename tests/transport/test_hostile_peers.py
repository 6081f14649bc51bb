"""Hostile and broken peers: garbage, oversized frames, replayed HELLOs, silence,
too many connections. The node closes the connection, logs, and keeps serving."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from changeagent.raft.messages import Message, MessageType
from changeagent.transport import (
    CLUSTER_PATH,
    PROTOCOL_VERSION,
    Challenge,
    Hello,
    TransportConfig,
    encode_frame,
    encode_prefixed,
)
from changeagent.transport.auth import Credentials, dial_handshake
from changeagent.transport.codec import PREFIX, FrameDecoder
from changeagent.transport.streams import Dialer
from changeagent.transport.tcplink import TcpDialer
from changeagent.transport.wslink import WebSocketDialer
from tests.transport.harness import (
    CLUSTER,
    SECRET,
    WAIT_S,
    Node,
    message,
    run,
    started,
    stop_all,
    wait_until,
)

RESEND_S = 0.5  # still_serves: a Raft message lost on a breaking connection goes again


async def raw(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", node.port)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the other side closes (after reading whatever it sent first)."""
    try:
        while await asyncio.wait_for(reader.read(65536), 10):
            pass
    except ConnectionError:
        pass
    return True


async def still_serves(node: Node, friend: Node) -> None:
    """`friend`'s messages reach `node` again, within `WAIT_S`. One written while the
    connection `node` is closing is still open at `friend`'s end is lost (the
    transport's contract: a Raft message on a breaking connection is gone, Raft sends
    again), so it is sent again every `RESEND_S` until one arrives, as Raft would."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        friend.transport.send(node.node_id, message(friend.node_id, node.node_id, index=99))
        try:
            while True:
                peer, received = await node.next_message(RESEND_S)
                if received.index == 99:
                    assert peer == friend.node_id
                    return
        except TimeoutError:
            if asyncio.get_running_loop().time() > deadline:
                raise


async def member_stream(node: Node, node_id: int = 9, dialer: Dialer | None = None) -> object:
    """An authenticated link to `node`, made by hand (we hold the secret)."""
    dialer = dialer or TcpDialer()
    stream = await dialer.connect(f"127.0.0.1:{node.port}", 1 << 20)
    await dial_handshake(stream, Credentials(node_id, CLUSTER, SECRET), 5.0, link=True)
    return stream


def test_garbage_bytes_close_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(Node(1, "tcp", addresses), Node(2, "tcp", addresses))
        try:
            reader, writer = await raw(b)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
            assert await closed_by_peer(reader)
            writer.close()
            assert b.transport.stats().handshake_failures == 1
            await still_serves(b, a)
        finally:
            await stop_all([a, b])

    with caplog.at_level(logging.WARNING, logger="changeagent.transport"):
        run(scenario())
    assert any("refused a connection" in r.getMessage() for r in caplog.records)


def test_an_oversized_length_prefix_closes_the_connection() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        config = TransportConfig(frame_bytes_max=1024, queue_bytes_max=4096)
        a = await Node(1, "tcp", addresses).start()
        b = await Node(2, "tcp", addresses, config=config).start()
        try:
            reader, writer = await raw(b)
            writer.write(PREFIX.pack(1 << 30))  # announces a gigabyte: refused at once
            assert await closed_by_peer(reader)
            writer.close()
            await still_serves(b, a)
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("carrier", ["tcp", "ws"])
def test_an_oversized_frame_from_a_member_closes_only_that_connection(
    carrier: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        config = TransportConfig(frame_bytes_max=4096, queue_bytes_max=8192)
        a = await Node(1, carrier, addresses).start()
        b = await Node(2, carrier, addresses, config=config).start()
        try:
            a.transport.send(2, message(1, 2, index=1))
            await b.next_message()
            big = Message(
                type=MessageType.SNAPSHOT, source=1, target=2, term=1, context=b"x" * 10_000
            )
            a.transport.send(2, big)  # a's limit is 16 MiB; b's is 4 KiB
            await wait_until(lambda: b.transport.stats().frame_errors == 1)
            await still_serves(b, a)  # a reconnects; b is fine
            assert a.transport.stats().peers[2].reconnects >= 1
        finally:
            await stop_all([a, b])

    with caplog.at_level(logging.WARNING, logger="changeagent.transport"):
        run(scenario())
    assert any(
        "exceeds the limit" in r.getMessage() or "size" in r.getMessage().lower()
        for r in caplog.records
    )


def test_a_replayed_hello_is_refused() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(Node(1, "tcp", addresses), Node(2, "tcp", addresses))
        try:
            # Record a genuine dialer HELLO ...
            reader, writer = await raw(b)
            decoder = FrameDecoder()
            (challenge,) = decoder.feed(await reader.read(65536))
            assert isinstance(challenge, Challenge)
            stream = await TcpDialer().connect(f"127.0.0.1:{b.port}", 1 << 20)
            recorded: list[Hello] = []
            original = stream.write_bodies

            async def tap(bodies: object) -> None:
                from changeagent.transport import decode_frame

                for body in bodies:  # type: ignore[attr-defined]
                    frame = decode_frame(body)
                    if isinstance(frame, Hello):
                        recorded.append(frame)
                await original(bodies)  # type: ignore[arg-type]

            stream.write_bodies = tap  # type: ignore[method-assign]
            await dial_handshake(stream, Credentials(9, CLUSTER, SECRET), 5.0, link=True)
            await stream.close()
            # ... and replay it on a new connection: its challenge nonce differs.
            failures = b.transport.stats().handshake_failures
            writer.write(encode_prefixed(recorded[0]))
            assert await closed_by_peer(reader)
            writer.close()
            assert b.transport.stats().handshake_failures == failures + 1
            await still_serves(b, a)
        finally:
            await stop_all([a, b])

    run(scenario())


def test_a_first_frame_that_is_not_hello_is_refused() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        b = await Node(2, "tcp", addresses).start()
        try:
            reader, writer = await raw(b)
            writer.write(encode_prefixed(message(1, 2)))
            assert await closed_by_peer(reader)
            writer.close()
            hello = Hello(PROTOCOL_VERSION, CLUSTER, 1, b"n" * 32, b"p" * 32)
            reader, writer = await raw(b)
            writer.write(encode_prefixed(hello))  # a forged proof
            assert await closed_by_peer(reader)
            writer.close()
            assert b.transport.stats().handshake_failures == 2
        finally:
            await b.stop()

    run(scenario())


def test_members_cannot_spoof_the_source_of_raft_messages() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(Node(1, "tcp", addresses), Node(2, "tcp", addresses))
        try:
            stream = await member_stream(b, node_id=9)
            await stream.write_frames([message(1, 2)])  # type: ignore[attr-defined]
            await wait_until(lambda: b.transport.stats().frame_errors == 1)
            assert b.received.empty()
            await still_serves(b, a)
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("carrier", ["tcp", "ws"])
def test_silent_connections_time_out(carrier: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        config = TransportConfig(handshake_timeout_s=0.3, read_timeout_s=0.5, keepalive_s=0.1)
        b = await Node(2, carrier, addresses, config=config).start()
        dialer = TcpDialer() if carrier == "tcp" else WebSocketDialer()
        try:
            if carrier == "tcp":
                reader, writer = await raw(b)  # never says HELLO
                assert await closed_by_peer(reader)
                writer.close()
            stream = await member_stream(b, dialer=dialer)  # says HELLO, then nothing
            await wait_until(lambda: b.transport.stats().connections == 1)
            await wait_until(lambda: b.transport.stats().connections == 0)
            await stream.close()  # type: ignore[attr-defined]
        finally:
            await dialer.close()
            await b.stop()

    with caplog.at_level(logging.WARNING, logger="changeagent.transport"):
        run(scenario())
    assert any("nothing received for 0.5s" in r.getMessage() for r in caplog.records)


def test_idle_links_stay_up_through_keepalives() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        config = TransportConfig(read_timeout_s=0.4, keepalive_s=0.1)
        a = await Node(1, "tcp", addresses, config=config).start()
        b = await Node(2, "tcp", addresses, config=config).start()
        try:
            a.transport.send(2, message(1, 2))
            await b.next_message()
            # Idle for several read timeouts: the wait is the point of the test.
            await asyncio.sleep(1.5)
            assert a.transport.stats().peers[2].reconnects == 0
            assert b.transport.stats().peers[1].reconnects == 0
        finally:
            await stop_all([a, b])

    run(scenario())


def test_inbound_connections_are_bounded() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        config = TransportConfig(inbound_connections_max=2)
        b = await Node(2, "tcp", addresses, config=config).start()
        try:
            held = [await raw(b) for _ in range(2)]
            for reader, _ in held:
                assert await asyncio.wait_for(reader.read(1), 5)  # the challenge began
            reader, writer = await raw(b)
            assert await closed_by_peer(reader)
            writer.close()
            assert b.transport.stats().inbound_refused == 1
            for _, held_writer in held:
                held_writer.close()
        finally:
            await b.stop()

    run(scenario())


def test_websocket_text_messages_and_plain_http_are_refused() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(Node(1, "ws", addresses), Node(2, "ws", addresses))
        try:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{b.port}{CLUSTER_PATH}"
                async with session.ws_connect(url) as socket:
                    await socket.receive()  # the challenge
                    await socket.send_str("hello?")
                    closing = await asyncio.wait_for(socket.receive(), 10)
                    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                async with session.get(url) as response:
                    assert response.status >= 400
            assert b.transport.stats().handshake_failures == 1
            await still_serves(b, a)
            assert encode_frame(message(1, 2))
        finally:
            await stop_all([a, b])

    run(scenario())
