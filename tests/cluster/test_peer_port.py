"""The peer port of real changeagent processes under broken and hostile peers.

- Strangers on a member's cluster port (garbage, an oversized length prefix, a
  malformed frame, a frame cut off, a HELLO with a wrong secret, from another
  cluster, from no cluster) are refused: that connection is closed and logged,
  and the node, its cluster and its term go on untouched.
- An authenticated member that sends an oversized, malformed or spoofed frame
  loses that connection (logged); the node neither crashes nor refuses the
  next connection. The test plays the leader that adds a standalone node (the
  `join` RPC carries the cluster id and secret the test chose), over the
  cluster port (`-cp`) and over the WebSocket on the API port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from changeagent.ids import format_id
from changeagent.raft.messages import Message, MessageType
from changeagent.transport import RpcRequest, RpcResponse, RpcValue
from changeagent.transport.auth import Credentials, PeerIdentity, dial_handshake
from changeagent.transport.codec import PREFIX, encode_prefixed
from changeagent.transport.errors import FrameError, HandshakeError
from changeagent.transport.frames import PROTOCOL_VERSION, Hello
from changeagent.transport.streams import (
    ConnectionClosed,
    Dialer,
    FrameStream,
)
from changeagent.transport.tcplink import TcpDialer
from changeagent.transport.wslink import WebSocketDialer
from tests.support.cluster import LOOPBACK, Cluster, ClusterNode, free_port
from tests.support.server import wait_until

TIMEOUT_S = 10.0
FRAME_BYTES_MAX = 16 * 1024 * 1024  # the node's default limit
TEST_NODE_ID = 4_242_424_242
TEST_CLUSTER_ID = 777_777
TEST_SECRET = b"a secret this test chose" * 2


def log_lines(node: ClusterNode, text: str) -> list[str]:
    assert node.server is not None
    return [line for line in list(node.server.log) if text in line]


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True once the node closes the connection (after whatever it sent first)."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while await reader.read(65536):
                pass
    except ConnectionError:
        pass
    return True


def raw_exchange(port: int, payload: bytes, half_close: bool = False) -> None:
    """Connect, send `payload` (optionally then EOF), and wait for the node to close."""

    async def run() -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            writer.write(payload)
            await writer.drain()
            if half_close:
                writer.write_eof()
            assert await _closed(reader)
        finally:
            writer.close()

    asyncio.run(run())


def refused_hello(port: int, cluster_id: int, secret: bytes) -> str:
    """Run the dialer's handshake with these credentials; the node must refuse it."""

    async def run() -> str:
        stream = await TcpDialer().connect(f"{LOOPBACK}:{port}", 1 << 20)
        try:
            await dial_handshake(stream, Credentials(TEST_NODE_ID, cluster_id, secret), 5.0, True)
        except (HandshakeError, ConnectionClosed, FrameError) as error:
            return f"{type(error).__name__}: {error}"
        finally:
            await stream.close()
        raise AssertionError(f"the node accepted a HELLO of cluster {cluster_id}")

    return asyncio.run(run())


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, 3, use_cluster_port=True).start().form()
    try:
        yield cluster
    finally:
        cluster.kill()


def test_strangers_on_a_members_cluster_port_are_refused_and_logged(trio: Cluster) -> None:
    leader = trio.leader()
    assert leader.cluster_port is not None
    port = leader.cluster_port
    before = leader.raft()
    cluster_id = int(before["clusterId"], 36)
    assert leader.post_change({"data": "before"}).status == 200
    cases: list[tuple[str, object, str]] = [
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)), "exceeds the limit"),
        ("oversized length prefix", PREFIX.pack(0xFFFFFFFF) + b"x" * 64, "exceeds the limit"),
        (
            "just over the frame limit",
            PREFIX.pack(FRAME_BYTES_MAX + 1) + b"x" * 64,
            "exceeds the limit",
        ),
        ("malformed frame", PREFIX.pack(8) + b"\xc1" * 8, "malformed"),
        ("frame cut off", PREFIX.pack(100) + b"x" * 10, "end of stream"),
        (
            "a HELLO that is not one",
            encode_prefixed(
                Hello(PROTOCOL_VERSION, cluster_id, TEST_NODE_ID, b"n" * 32, b"p" * 32)
            ),
            "failed to prove",
        ),
        ("wrong secret", (cluster_id, b"not the secret"), "failed to prove the cluster secret"),
        (
            "another cluster",
            (cluster_id + 1, TEST_SECRET),
            f"belongs to cluster {format_id(cluster_id + 1)}",
        ),
        ("no cluster", (0, b""), "belongs to cluster 0"),
    ]
    for name, action, reason in cases:
        refusals = len(log_lines(leader, "refused a connection"))
        if isinstance(action, bytes):
            raw_exchange(port, action, half_close=name == "frame cut off")
        else:
            assert isinstance(action, tuple)
            refused_hello(port, *action)

        def logged(refusals: int = refusals) -> list[str]:
            lines = log_lines(leader, "refused a connection")
            return lines[refusals:] if len(lines) > refusals else []

        new_lines = wait_until(logged, TIMEOUT_S, 0.02)
        assert reason in new_lines[0], (name, new_lines)
        print(f"\n{name}: {new_lines[0].strip()}", end="")
        assert leader.running, f"the node died after: {name}"
    # The node, its cluster and its term are untouched.
    after = leader.raft()
    assert (after["term"], after["leader"], after["clusterId"], after["voters"]) == (
        before["term"],
        before["leader"],
        before["clusterId"],
        before["voters"],
    )
    assert leader.state() == "Leader"
    assert not log_lines(leader, "Traceback")
    for node in trio.nodes:
        assert node.post_change({"data": f"after, via {node.name}"}).status == 200
    trio.wait_converged()
    lists = trio.lists()
    assert lists[0] == lists[1] == lists[2] and len(lists[0]) == 4


async def _connect(dialer: Dialer, address: str) -> FrameStream:
    return await dialer.connect(address, FRAME_BYTES_MAX + (1 << 20))


async def _member_link(dialer: Dialer, address: str) -> tuple[FrameStream, PeerIdentity]:
    stream = await _connect(dialer, address)
    credentials = Credentials(TEST_NODE_ID, TEST_CLUSTER_ID, TEST_SECRET)
    identity = await dial_handshake(stream, credentials, 5.0, link=True)
    return stream, identity


async def _closed_stream(stream: FrameStream) -> bool:
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                await stream.read_frame()
    except ConnectionError:
        return True


@pytest.mark.parametrize("carrier", ["tcp", "ws"])
def test_a_member_sending_bad_frames_loses_only_that_connection(
    tmp_path: Path, carrier: str
) -> None:
    cluster_port = free_port() if carrier == "tcp" else None
    node = ClusterNode("solo", tmp_path / "solo", free_port(), cluster_port=cluster_port).start()
    try:
        address = f"{LOOPBACK}:{cluster_port or node.port}"
        node_id = int(node.node_id(), 36)

        async def scenario() -> None:
            dialer: Dialer = TcpDialer() if carrier == "tcp" else WebSocketDialer()
            try:
                # Play the leader adding a standalone node: describe is implied, join.
                stream = await _connect(dialer, address)
                identity = await dial_handshake(stream, Credentials(TEST_NODE_ID), 5.0, False)
                assert (identity.node_id, identity.cluster_id, identity.member) == (
                    node_id,
                    0,
                    False,
                )
                join: dict[str, RpcValue] = {
                    "cluster_id": TEST_CLUSTER_ID,
                    "secret": TEST_SECRET,
                    "members": {},
                    "voters": [],
                    "learners": [],
                }
                await stream.write_frames([RpcRequest(1, "join", join)])
                async with asyncio.timeout(TIMEOUT_S):
                    reply = await stream.read_frame()
                assert isinstance(reply, RpcResponse) and not reply.error_code, reply
                await stream.close()

                bad: list[tuple[str, list[bytes] | None, Message | None]] = [
                    ("oversized", [b"x" * (FRAME_BYTES_MAX + 1)], None),
                    ("malformed", [b"\xc1\xc1\xc1\xc1"], None),
                    ("wrong shape", [b"\x92\x01\x90"], None),
                    (
                        "spoofed source",
                        None,
                        Message(
                            type=MessageType.HEARTBEAT,
                            source=TEST_NODE_ID + 1,
                            target=node_id,
                            term=1,
                        ),
                    ),
                ]
                for name, bodies, frame in bad:
                    closings = len(
                        log_lines(
                            node, f"closing the connection with node {format_id(TEST_NODE_ID)}"
                        )
                    )
                    link, identity = await _member_link(dialer, address)
                    assert identity.member and identity.node_id == node_id, (name, identity)
                    with contextlib.suppress(ConnectionError):
                        if bodies is not None:
                            await link.write_bodies(bodies)
                        elif frame is not None:
                            await link.write_frames([frame])
                    assert await _closed_stream(link), name
                    await link.close()

                    def logged(closings: int = closings) -> list[str]:
                        lines = log_lines(
                            node, f"closing the connection with node {format_id(TEST_NODE_ID)}"
                        )
                        return lines[closings:] if len(lines) > closings else []

                    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
                    while not logged():
                        now = asyncio.get_running_loop().time()
                        assert now < deadline, (name, log_lines(node, "")[-5:])
                        await asyncio.sleep(0.02)
                    assert "bad frame" in logged()[0], (name, logged())
                    print(f"\n{carrier} {name}: {logged()[0].strip()}", end="")
                    assert node.running, f"the node died after: {name}"
                # After all that, members still get in.
                link, identity = await _member_link(dialer, address)
                assert identity.member
                await link.close()
            finally:
                await dialer.close()

        asyncio.run(asyncio.wait_for(scenario(), 120))
        assert node.running
        assert node.request("GET", "/health").status == 200
        status = node.raft()
        assert status["clusterId"] != "0"
        assert node.get_changes().status == 200
        assert not log_lines(node, "Traceback")
    finally:
        node.kill()
