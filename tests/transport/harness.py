"""Nodes for transport tests: a Transport, its listener (TCP or WebSocket on an
aiohttp server), and queues of what it received. Everything is bounded in time."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from changeagent.raft.messages import Message, MessageType
from changeagent.transport import (
    Proposal,
    ProposalReply,
    ReadIndexReply,
    ReadIndexRequest,
    Reply,
    Request,
    RequestContext,
    RequestFailed,
    RpcResponse,
    TcpDialer,
    Transport,
    TransportConfig,
    WebSocketDialer,
    add_cluster_route,
)

T = TypeVar("T")
TEST_TIMEOUT_S = 30.0
WAIT_S = 10.0
SECRET = b"cluster secret"
CLUSTER = 7
FAST = TransportConfig(backoff_s_min=0.01, backoff_s_max=0.2, connect_timeout_s=2.0)


def run(coroutine: Coroutine[Any, Any, T], timeout_s: float = TEST_TIMEOUT_S) -> T:
    """Run one test's coroutine on a fresh loop, failing it after `timeout_s`."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout_s))


async def wait_until(
    condition: Callable[[], bool], timeout_s: float = WAIT_S, what: str = "condition"
) -> None:
    """Poll `condition` every few ms until it holds; fail after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def message(source: int, target: int, index: int = 0) -> Message:
    return Message(type=MessageType.HEARTBEAT, source=source, target=target, term=1, index=index)


RequestHandler = Callable[[RequestContext, Request], Awaitable[Reply]]


class Node:
    """One transport plus its listener; `addresses` is shared by all nodes of a test."""

    def __init__(
        self,
        node_id: int,
        carrier: str,
        addresses: dict[int, str],
        *,
        cluster_id: int = CLUSTER,
        secret: bytes = SECRET,
        config: TransportConfig = FAST,
        server_tls: ssl.SSLContext | None = None,
        client_tls: ssl.SSLContext | None = None,
        on_request: RequestHandler | None = None,
    ) -> None:
        self.node_id = node_id
        self.carrier = carrier
        self.addresses = addresses
        self.cluster_id = cluster_id
        self.secret = secret
        self.config = config
        self.server_tls = server_tls
        self.client_tls = client_tls
        self.on_request = on_request or self.echo
        self.received: asyncio.Queue[tuple[int, Message]] = asyncio.Queue()
        self.requests: list[tuple[RequestContext, Request]] = []
        self.port = 0
        self._transport: Transport | None = None
        self._runner: web.AppRunner | None = None

    @property
    def transport(self) -> Transport:
        assert self._transport is not None
        return self._transport

    async def start(self, port: int = 0) -> Node:
        dialer = (
            TcpDialer(self.client_tls)
            if self.carrier == "tcp"
            else WebSocketDialer(self.client_tls)
        )
        self._transport = Transport(
            self.node_id,
            on_message=lambda peer, m: self.received.put_nowait((peer, m)),
            on_request=self._handle,
            resolve_address=self.addresses.get,
            dialer=dialer,
            config=self.config,
            cluster_id=self.cluster_id,
            secret=self.secret,
        )
        if self.carrier == "tcp":
            server = await self.transport.serve_tcp("127.0.0.1", port, self.server_tls)
            self.port = server.sockets[0].getsockname()[1]
        else:
            app = web.Application()
            add_cluster_route(app, self.transport)
            self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=self.server_tls)
            await site.start()
            self.port = self._runner.addresses[0][1]
        self.addresses[self.node_id] = f"127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        if self._transport is not None:
            await self._transport.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def next_message(self, timeout_s: float = WAIT_S) -> tuple[int, Message]:
        return await asyncio.wait_for(self.received.get(), timeout_s)

    async def _handle(self, context: RequestContext, request: Request) -> Reply:
        self.requests.append((context, request))
        return await self.on_request(context, request)

    async def echo(self, context: RequestContext, request: Request) -> Reply:
        if isinstance(request, Proposal):
            if request.key == "refuse":
                raise RequestFailed("not_leader", "ask someone else")
            return ProposalReply(0, index=len(request.data))
        if isinstance(request, ReadIndexRequest):
            return ReadIndexReply(0, index=self.node_id * 100)
        if request.method == "fail":
            raise RuntimeError("handler bug")
        return RpcResponse(0, payload={"node": self.node_id, "echo": request.payload})


async def started(*nodes: Node) -> list[Node]:
    for node in nodes:
        await node.start()
    return list(nodes)


async def stop_all(nodes: list[Node]) -> None:
    await asyncio.gather(*(node.stop() for node in nodes))
