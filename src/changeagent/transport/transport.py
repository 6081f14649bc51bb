"""`Transport`: authenticated, persistent peer links with bounded send queues.

One `_Link` per peer holds the send queue, the current connection and one task
that dials (with backoff) while there is no connection and writes queued frames
while there is one. Every connection, dialed or accepted, has a reader that
validates frames and hands them on: Raft messages to `on_message`, requests to
`on_request` (answered on the same connection), replies to the waiting caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from changeagent.eager import start_now
from changeagent.ids import format_id
from changeagent.raft.messages import Message
from changeagent.timed import wait_owned
from changeagent.transport import tcplink
from changeagent.transport.auth import (
    Credentials,
    PeerIdentity,
    accept_handshake,
    dial_handshake,
)
from changeagent.transport.codec import encode_frame
from changeagent.transport.config import TransportConfig
from changeagent.transport.errors import (
    FrameError,
    HandshakeError,
    PeerUnavailable,
    RequestFailed,
    TransportError,
)
from changeagent.transport.frames import (
    ERROR_DISCONNECTED,
    ERROR_INTERNAL,
    ERROR_QUEUE_FULL,
    ERROR_TIMEOUT,
    Frame,
    Ping,
    Proposal,
    ProposalReply,
    ReadIndexReply,
    ReadIndexRequest,
    RpcRequest,
    RpcResponse,
    RpcValue,
)
from changeagent.transport.link import Backoff, LinkCounters, Outgoing, PeerStats, SendQueue
from changeagent.transport.streams import ConnectionClosed, Dialer, FrameStream

logger = logging.getLogger("changeagent.transport")

Request = Proposal | ReadIndexRequest | RpcRequest
Reply = ProposalReply | ReadIndexReply | RpcResponse
ReplyT = TypeVar("ReplyT", ProposalReply, ReadIndexReply, RpcResponse)

_PING_BODY = encode_frame(Ping())
_DIAL_ERRORS = (ConnectionClosed, OSError, HandshakeError, FrameError, TimeoutError, ValueError)
_READ_ERRORS = (FrameError, ConnectionClosed, TimeoutError)


def _no_early_reply(reply: Reply, along: Message | None = None) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who sent a request. `peer_id` is proven only when `member` is True.

    `reply_now(reply, along)` answers before `on_request` returns, from wherever the
    answer is known first (a forwarded write: the moment it is applied, inside the
    Ready loop): written at once when the connection is idle, True then, and whatever
    `on_request` returns afterwards is not sent. `along`, a Raft message to the same
    peer (the commit notice its answer needs), then goes out too: in the same write
    when the connection is the peer's link, else as by `send` (also when the reply
    went out before). False: nothing was written (nor `along` sent), the returned
    reply goes as usual."""

    peer_id: int
    member: bool
    address: str
    reply_now: Callable[[Reply, Message | None], bool] = _no_early_reply


OnMessage = Callable[[int, Message], None]
OnRequest = Callable[[RequestContext, Request], Awaitable[Reply]]
ResolveAddress = Callable[[int], "str | None"]


@dataclass(frozen=True, slots=True)
class TransportStats:
    peers: dict[int, PeerStats]
    connections: int  # open and authenticated, in both directions, links and calls
    inbound_connections: int  # being served, including those still in the handshake
    inbound_refused: int  # over `inbound_connections_max`
    handshake_failures: int  # wrong cluster, wrong secret, replayed or garbage HELLO
    frame_errors: int  # connections closed for a malformed, oversized or unexpected frame


class Connection:
    """One authenticated connection; writes are serialized by a lock."""

    def __init__(self, stream: FrameStream, identity: PeerIdentity) -> None:
        self.stream = stream
        self.identity = identity
        self.closed = False
        self.requests_in_flight = 0
        self.idle_timeout = False  # closed for receiving nothing in the read timeout
        self._write_lock = asyncio.Lock()
        self._flushing: asyncio.Task[None] | None = None  # a `send_now` waiting on drain

    async def send(self, bodies: list[bytes]) -> None:
        async with self._write_lock:
            flushing = self._flushing
            if flushing is not None and not flushing.done():
                await asyncio.shield(flushing)  # its bytes are queued first: keep order
            await self.stream.write_bodies(bodies)

    def idle(self) -> bool:
        """Open, and nothing is being written: a frame written now goes out in order."""
        flushing = self._flushing
        return (
            not self.closed
            and not self._write_lock.locked()
            and (flushing is None or flushing.done())
        )

    def send_now(self, bodies: list[bytes], on_failure: Callable[[], None]) -> None:
        """Write at once, in this call (only when `idle()`); raises `ConnectionClosed`.
        The rare write that must wait for the socket's buffer to drain finishes in a
        task that `send` waits for, so frames stay in order; `on_failure` is called
        if that task fails."""
        flushing = start_now(self.stream.write_bodies(bodies))
        if flushing is not None:
            self._flushing = flushing

            def flushed(task: asyncio.Task[None]) -> None:
                if task.cancelled() or task.exception() is not None:
                    on_failure()

            flushing.add_done_callback(flushed)

    async def close(self) -> None:
        self.closed = True
        await self.stream.close()


class _Link:
    def __init__(self, peer_id: int, config: TransportConfig, rng: random.Random) -> None:
        self.peer_id = peer_id
        self.queue = SendQueue(config.queue_messages_max, config.queue_bytes_max)
        self.backoff = Backoff(config.backoff_s_min, config.backoff_s_max, rng)
        self.connection: Connection | None = None
        self.wakeup = asyncio.Event()  # something to write, or the connection changed
        self.reconnect = asyncio.Event()  # an inbound connection or a new address
        self.counters = LinkCounters()
        self.task: asyncio.Task[None] | None = None

    def idle_connection(self) -> Connection | None:
        """The connection, when a frame written to it now goes out in order:
        nothing queued before it and nothing being written."""
        connection = self.connection
        if connection is not None and not self.queue and connection.idle():
            return connection
        return None


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Reply]
    reply_type: type[Reply]
    peer_id: int
    connection: Connection | None = None  # the connection the request went out on
    # Called with a successful reply as it is read, before the caller resumes (`propose`).
    on_reply: Callable[[Reply], None] | None = None
    by_address: bool = False  # `call_address`: not a request on the peer's link


class Transport:
    """Peer links of one node. Create it inside a running event loop.

    `on_message(peer_id, message)` receives Raft messages from authenticated
    members; it must not block. `on_request(context, request)` answers
    proposals and read indexes from members, and RPCs from anyone who completed
    the handshake (`context.member` tells which); raise `RequestFailed` to
    answer with an error code. For a `Proposal` it runs in the call that read
    the frame (or the connection reader's task, for a frame read before it
    started) up to its first suspension, the rest in a task of its own: no
    `asyncio.timeout` or `current_task` before its first `await`. Every other
    request runs in a task from the start.
    `resolve_address(peer_id)` gives a peer's current `host:port` (None when
    unknown) and is asked before every dial.
    """

    def __init__(
        self,
        node_id: int,
        *,
        on_message: OnMessage,
        on_request: OnRequest,
        resolve_address: ResolveAddress,
        dialer: Dialer,
        config: TransportConfig | None = None,
        cluster_id: int = 0,
        secret: bytes = b"",
        rng: random.Random | None = None,
    ) -> None:
        self._config = config or TransportConfig()
        self._config.validate()
        self._message_age_max_s = self._config.message_age_max_s  # set_message_age_max
        self._credentials = Credentials(node_id, cluster_id, secret)
        self._on_message = on_message
        self._on_request = on_request
        self._resolve_address = resolve_address
        self._dialer = dialer
        self._rng = rng or random.Random()
        self._links: dict[int, _Link] = {}
        self._pending: dict[int, _Pending] = {}
        self._request_ids = itertools.count(1)
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._servers: list[asyncio.Server] = []
        self._inbound = 0
        self._inbound_refused = 0
        self._handshake_failures = 0
        self._frame_errors = 0
        self._closing = False

    # ------------------------------------------------------------ identity

    @property
    def node_id(self) -> int:
        return self._credentials.node_id

    @property
    def cluster_id(self) -> int:
        return self._credentials.cluster_id

    @property
    def config(self) -> TransportConfig:
        return self._config

    def set_cluster(self, cluster_id: int, secret: bytes) -> None:
        """Join a cluster (after the join RPC) or leave it (0, b"").

        Member connections made under the old credentials are closed; links
        redial with the new ones.
        """
        old = self._credentials
        self._credentials = Credentials(old.node_id, cluster_id, secret)
        if (old.cluster_id, old.secret) != (cluster_id, secret):
            for connection in list(self._connections):
                if connection.identity.member:
                    self._close_soon(connection)

    # ------------------------------------------------------------ outbound

    def send_held(self) -> None:
        """Every connection hands its socket now what it holds for the next loop
        iteration (`LinkProtocol.write`): called once a batch of Raft messages or
        answers is written, so that none waits for the rest of the iteration (an
        inline storage write's fsync, the apply)."""
        for connection in self._connections:
            connection.stream.send_held()

    def send(self, peer_id: int, message: Message) -> None:
        """Queue a Raft message; never blocks. When the queue is full the oldest
        queued Raft messages are dropped (and counted): Raft resends."""
        link = self._link(peer_id)
        body = encode_frame(message)
        if len(body) > self._config.frame_bytes_max:
            link.counters.messages_dropped += 1
            logger.warning(
                "dropped a %d-byte message to node %s: over the limit",
                len(body),
                format_id(peer_id),
            )
            return
        connection = link.idle_connection()
        if connection is not None:
            self._send_now(link, connection, body)
            return
        queued, dropped = link.queue.push(Outgoing(body, queued_s=time.monotonic()))
        link.counters.messages_dropped += dropped
        if queued:
            link.wakeup.set()

    def _send_now(
        self, link: _Link, connection: Connection, body: bytes, messages: int = 1
    ) -> None:
        """Nothing waits before `body`: it goes out in this loop iteration, not one
        hop later in the link's writer (a follower's APPEND before the leader's own
        disk write starts; an acknowledgement as soon as it is durable; a forwarded
        write). A request (`messages` 0: it is no Raft message) on a connection that
        fails is failed by `_close_soon`, as one the link's writer had sent."""
        try:
            connection.send_now([body], lambda: self._close_soon(connection))
        except ConnectionClosed as error:
            self._sent(link, connection, messages, error)
        else:
            self._sent(link, connection, messages)

    async def propose(
        self,
        peer_id: int,
        entry_type: int,
        data: bytes,
        key: str = "",
        timeout_s: float = 10.0,
        on_index: Callable[[int], None] | None = None,
    ) -> int:
        """Forward a write to the leader `peer_id`; the entry's index, or `RequestFailed`.

        `ERROR_QUEUE_FULL` means it was never sent; `ERROR_TIMEOUT` and
        `ERROR_DISCONNECTED` mean it may or may not have been accepted
        (retry with the same idempotency key).

        `on_index(index)`, if given, is called as a successful reply is read, before
        the frames after it (the commit notice the leader sends right behind it)
        and before this call returns, which takes a few loop iterations more.
        """

        def build(request_id: int) -> Proposal:
            return Proposal(request_id, entry_type, data, key)

        on_reply = None if on_index is None else lambda r: on_index(cast(ProposalReply, r).index)
        reply = await self._request(peer_id, build, ProposalReply, timeout_s, on_reply)
        return reply.index

    async def read_index(self, peer_id: int, timeout_s: float = 10.0) -> int:
        """Ask the leader `peer_id` for a linearizable read index."""
        reply = await self._request(peer_id, ReadIndexRequest, ReadIndexReply, timeout_s)
        return reply.index

    async def call(
        self, peer_id: int, method: str, payload: RpcValue = None, timeout_s: float = 10.0
    ) -> RpcValue:
        """An RPC to a member over its link; the answer's payload, or `RequestFailed`."""

        def build(request_id: int) -> RpcRequest:
            return RpcRequest(request_id, method, payload)

        reply = await self._request(peer_id, build, RpcResponse, timeout_s)
        return reply.payload

    async def call_address(
        self, address: str, method: str, payload: RpcValue = None, timeout_s: float = 10.0
    ) -> tuple[int, int, RpcValue]:
        """An RPC over a one-shot connection to `address`, member or not.

        Returns (node id, cluster id, payload) of whoever answered. Used to
        reach a node before it is a member: `describe`, then `join` carrying
        the cluster id and secret. A node of another cluster (or with another
        secret) refuses the handshake: `PeerUnavailable`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                connection = await self._open(address, link=False)
        except _DIAL_ERRORS as error:
            # The caller names the address; the reason alone follows it.
            raise PeerUnavailable(str(error) or type(error).__name__) from None
        self._spawn(self._serve(connection))
        try:
            request_id = next(self._request_ids)
            identity = connection.identity
            pending = _Pending(
                loop.create_future(), RpcResponse, identity.node_id, connection, by_address=True
            )
            self._pending[request_id] = pending
            with contextlib.suppress(ConnectionClosed):  # the reader fails the request
                await connection.send([encode_frame(RpcRequest(request_id, method, payload))])
            reply = await self._await_reply(request_id, pending, deadline - loop.time(), None)
        finally:
            self._close_soon(connection)
        return identity.node_id, identity.cluster_id, cast(RpcResponse, reply).payload

    def set_message_age_max(self, seconds: float) -> None:
        """Drop Raft messages that waited longer than `seconds` for a connection
        (the node's election timeout, as replicated /config changes it): older
        ones are superseded by what Raft sent since, and a stale APPEND could make
        its receiver take a leader that stopped leading for a live one."""
        if not seconds > 0:
            raise ValueError(f"the age limit of a queued message must be positive, not {seconds!r}")
        self._message_age_max_s = seconds

    def address_changed(self, peer_id: int) -> None:
        """The peer's address changed: dial now instead of after the backoff."""
        link = self._links.get(peer_id)
        if link is not None:
            link.backoff.reset()
            link.reconnect.set()

    def remove_peer(self, peer_id: int) -> None:
        """Forget a peer: close its link and fail what was queued for it."""
        link = self._links.pop(peer_id, None)
        if link is None:
            return
        if link.task is not None:
            link.task.cancel()
        if link.connection is not None:
            self._close_soon(link.connection)
        for item in link.queue.drain():
            self._fail(
                item.request_id, ERROR_DISCONNECTED, f"node {format_id(peer_id)} was removed"
            )

    # ------------------------------------------------------------ inbound

    async def serve_tcp(self, host: str, port: int, ssl_context: Any = None) -> asyncio.Server:
        """Listen on the cluster port; `ssl_context` (server side) enables TLS, and
        mutual TLS when it has `verify_mode = ssl.CERT_REQUIRED`."""
        config = self._config
        server = await tcplink.serve(
            lambda stream: self._spawn(self.accept(stream)),
            host,
            port,
            config.frame_bytes_max,
            ssl_context,
            config.handshake_timeout_s,
        )
        self._servers.append(server)
        return server

    def accepting(self) -> bool:
        """False when one more inbound connection would be refused."""
        return not self._closing and self._inbound < self._config.inbound_connections_max

    async def accept(self, stream: FrameStream) -> None:
        """Serve one inbound connection until it closes (the carriers call this)."""
        if not self.accepting():
            self._inbound_refused += 1
            logger.warning("refused a connection from %s: too many", stream.remote_address)
            await stream.close()
            return
        self._inbound += 1
        try:
            connection = await self._accept_handshake(stream)
            if connection is not None:
                await self._serve(connection)
        finally:
            self._inbound -= 1

    async def _accept_handshake(self, stream: FrameStream) -> Connection | None:
        timeout_s = self._config.handshake_timeout_s
        try:
            identity = await accept_handshake(stream, self._credentials, timeout_s)
        except (HandshakeError, FrameError, ConnectionClosed) as error:
            self._handshake_failures += 1
            logger.warning("refused a connection from %s: %s", stream.remote_address, error)
            await stream.close()
            return None
        connection = Connection(stream, identity)
        self._connections.add(connection)
        if identity.member and identity.link:
            link = self._link(identity.node_id)
            if not self._adopt(link, connection):
                logger.info("closed a duplicate link from node %s", format_id(identity.node_id))
                await self._discard(connection)
                return None
        return connection

    # ------------------------------------------------------------ diagnostics

    def stats(self) -> TransportStats:
        return TransportStats(
            peers={peer_id: self._peer_stats(link) for peer_id, link in self._links.items()},
            connections=len(self._connections),
            inbound_connections=self._inbound,
            inbound_refused=self._inbound_refused,
            handshake_failures=self._handshake_failures,
            frame_errors=self._frame_errors,
        )

    def _peer_stats(self, link: _Link) -> PeerStats:
        counters, connection = link.counters, link.connection
        return PeerStats(
            peer_id=link.peer_id,
            connected=connection is not None and not connection.closed,
            address=connection.identity.address if connection is not None else "",
            messages_sent=counters.messages_sent,
            messages_received=counters.messages_received,
            messages_dropped=counters.messages_dropped,
            requests_failed=counters.requests_failed,
            reconnects=max(0, counters.connections - 1),
            queue_messages=len(link.queue),
            queue_bytes=link.queue.bytes,
            last_error=counters.last_error,
        )

    async def close(self) -> None:
        """Stop listening, close every connection, fail every waiting request."""
        self._closing = True
        for server in self._servers:
            server.close()
        for peer_id in list(self._links):
            self.remove_peer(peer_id)
        await asyncio.gather(*(self._discard(c) for c in list(self._connections)))
        for request_id in list(self._pending):
            self._fail(request_id, ERROR_DISCONNECTED, "the transport is closed")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._dialer.close()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()

    # ------------------------------------------------------------ links

    def _link(self, peer_id: int) -> _Link:
        link = self._links.get(peer_id)
        if link is None:
            if peer_id <= 0 or peer_id == self.node_id:
                raise ValueError(f"no link to node {format_id(peer_id)}")
            if self._closing:
                raise TransportError("the transport is closed")
            link = _Link(peer_id, self._config, self._rng)
            self._links[peer_id] = link
            link.task = self._spawn(self._run_link(link))
        return link

    async def _run_link(self, link: _Link) -> None:
        while not self._closing and self._links.get(link.peer_id) is link:
            connection = link.connection
            if connection is None:
                await self._dial(link)
            elif connection.closed:
                self._detach(connection)
            else:
                await self._write(link, connection)

    async def _dial(self, link: _Link) -> None:
        link.reconnect.clear()
        address = self._resolve(link.peer_id)
        if address is not None:
            try:
                connection = await self._open(address, link=True, peer_id=link.peer_id)
            except _DIAL_ERRORS as error:
                link.counters.last_error = f"dial {address}: {error}"
                logger.debug(
                    "could not reach node %s at %s: %s", format_id(link.peer_id), address, error
                )
            else:
                if self._adopt(link, connection):
                    self._spawn(self._serve(connection))
                    return
                await self._discard(connection)
        if link.connection is None:
            await _wait(link.reconnect, link.backoff.next_delay_s())

    def _resolve(self, peer_id: int) -> str | None:
        try:
            return self._resolve_address(peer_id)
        except Exception:
            logger.exception("resolve_address(%s) failed", format_id(peer_id))
            return None

    async def _open(self, address: str, link: bool, peer_id: int = 0) -> Connection:
        config = self._config
        connect = self._dialer.connect(address, config.frame_bytes_max)
        async with asyncio.timeout(config.connect_timeout_s):
            stream = await connect
        try:
            credentials, timeout_s = self._credentials, config.handshake_timeout_s
            identity = await dial_handshake(stream, credentials, timeout_s, link, peer_id)
            if link and not identity.member:
                raise HandshakeError(
                    f"node {format_id(identity.node_id)} at {address} is in no cluster"
                )
        except BaseException:
            await stream.close()
            raise
        connection = Connection(stream, identity)
        self._connections.add(connection)
        return connection

    def _adopt(self, link: _Link, connection: Connection) -> bool:
        """Make `connection` the link's, unless the current one is preferred.

        When both nodes dial at once, both keep the connection dialed by the
        smaller node id, so each pair ends up with one connection.
        """
        current = link.connection
        if current is not None and not current.closed:
            preferred = min(self.node_id, link.peer_id)
            current_preferred = current.identity.dialer_id == preferred
            if current_preferred and connection.identity.dialer_id != preferred:
                return False
            self._close_soon(current)
        link.connection = connection
        link.counters.connections += 1
        link.backoff.reset()
        link.reconnect.set()
        link.wakeup.set()
        return True

    async def _write(self, link: _Link, connection: Connection) -> None:
        """Write queued frames while `connection` is the link's; PING when idle."""
        config = self._config
        while link.connection is connection and not connection.closed:
            if not link.queue:
                link.wakeup.clear()
                if not await _wait(link.wakeup, config.keepalive_s):
                    await self._send_batch(link, connection, [_PING_BODY], 0)
                continue
            bodies: list[bytes] = []
            messages = 0
            stale_before_s = time.monotonic() - self._message_age_max_s
            batch, stale = link.queue.pop_batch(config.batch_bytes_max, stale_before_s)
            link.counters.messages_dropped += stale
            for item in batch:
                if item.request_id == 0:
                    messages += 1
                elif not self._claim(item.request_id, connection):
                    continue  # its caller gave up already
                bodies.append(item.body)
            if bodies:
                await self._send_batch(link, connection, bodies, messages)

    def _claim(self, request_id: int, connection: Connection) -> bool:
        pending = self._pending.get(request_id)
        if pending is None or pending.future.done():
            return False
        pending.connection = connection
        return True

    async def _send_batch(
        self, link: _Link, connection: Connection, bodies: list[bytes], messages: int
    ) -> None:
        try:
            await connection.send(bodies)
        except ConnectionClosed as error:
            self._sent(link, connection, messages, error)
        else:
            self._sent(link, connection, messages)

    def _sent(
        self,
        link: _Link,
        connection: Connection,
        messages: int,
        error: ConnectionClosed | None = None,
    ) -> None:
        """Count `messages` Raft messages as sent, or as dropped with the
        connection when writing failed with `error`."""
        if error is None:
            link.counters.messages_sent += messages
            return
        link.counters.messages_dropped += messages
        link.counters.last_error = f"send: {error}"
        self._close_soon(connection)

    # ------------------------------------------------------------ reading

    async def _serve(self, connection: Connection) -> None:
        """Read and dispatch frames until the connection fails; then clean up.

        A connection that sends nothing (not even a keepalive) for `read_timeout_s`
        is closed by a watchdog that looks at the time of the last frame: one timer
        per timeout period instead of one `asyncio.timeout` per frame, which cost
        a few percent of a member's CPU per message."""
        identity = connection.identity
        loop = asyncio.get_running_loop()
        timeout_s = self._config.read_timeout_s
        read_at_s = loop.time()
        watchdog: asyncio.TimerHandle

        def check_idle() -> None:
            nonlocal watchdog
            if loop.time() - read_at_s < timeout_s:
                watchdog = loop.call_at(read_at_s + timeout_s, check_idle)
            elif not connection.closed:
                connection.idle_timeout = True
                self._close_soon(connection)  # serving below then fails

        watchdog = loop.call_at(read_at_s + timeout_s, check_idle)
        dispatch = self._dispatch

        def on_frame(frame: Frame) -> None:
            nonlocal read_at_s
            read_at_s = loop.time()
            dispatch(connection, frame)

        try:
            await connection.stream.serve_frames(on_frame)
        except _READ_ERRORS as error:
            self._log_read_error(connection, error)
        finally:
            watchdog.cancel()
            await self._discard(connection)
            logger.debug(
                "connection with node %s (%s) closed", format_id(identity.node_id), identity.address
            )

    def _log_read_error(self, connection: Connection, error: Exception) -> None:
        identity = connection.identity
        if connection.idle_timeout:
            error = TimeoutError()
        elif connection.closed:
            return  # we closed it ourselves
        if isinstance(error, FrameError):
            self._frame_errors += 1
            reason = f"bad frame: {error}"
            logger.warning(
                "closing the connection with node %s (%s): %s",
                format_id(identity.node_id),
                identity.address,
                reason,
            )
        elif isinstance(error, TimeoutError):
            reason = f"nothing received for {self._config.read_timeout_s}s"
            logger.warning(
                "closing the connection with node %s (%s): %s",
                format_id(identity.node_id),
                identity.address,
                reason,
            )
        else:
            reason = f"connection lost: {error}"
            logger.info(
                "connection with node %s (%s) lost: %s",
                format_id(identity.node_id),
                identity.address,
                error,
            )
        link = self._links.get(identity.node_id)
        if link is not None and link.connection is connection:
            link.counters.last_error = reason

    def _dispatch(self, connection: Connection, frame: Frame) -> None:
        identity = connection.identity
        if isinstance(frame, Message):
            self._deliver(connection, frame)
        elif isinstance(frame, RpcRequest) or (
            isinstance(frame, Proposal | ReadIndexRequest) and identity.member
        ):
            self._start_request(connection, frame)
        elif isinstance(frame, ProposalReply | ReadIndexReply | RpcResponse):
            self._resolve_reply(connection, frame)
        elif not isinstance(frame, Ping):
            raise FrameError(f"unexpected {type(frame).__name__}")

    def _deliver(self, connection: Connection, message: Message) -> None:
        identity = connection.identity
        if not (identity.member and identity.link):
            raise FrameError("a Raft message outside a member link")
        if message.source != identity.node_id or message.target != self.node_id:
            source, target = format_id(message.source), format_id(message.target)
            raise FrameError(f"a message from {source} to {target} on this link")
        link = self._links.get(identity.node_id)
        if link is not None:
            link.counters.messages_received += 1
        try:
            self._on_message(identity.node_id, message)
        except Exception:
            logger.exception(
                "on_message failed for a message from node %s", format_id(identity.node_id)
            )

    def _start_request(self, connection: Connection, request: Request) -> None:
        if connection.requests_in_flight >= self._config.requests_in_flight_max:
            reply = _error_reply(request, ERROR_QUEUE_FULL, "too many requests in flight")
            self._spawn(self._send_reply(connection, reply))
            return
        connection.requests_in_flight += 1
        if isinstance(request, Proposal):
            # A forwarded write: its handler proposes before its first await, so
            # run it in this call (the frame's read) rather than one loop iteration
            # later in a task of its own (~15-35 µs on the path of every write
            # through a follower). See `on_request` for what that asks of it.
            self._track(start_now(self._answer(connection, request)))
        else:
            self._spawn(self._answer(connection, request))

    async def _answer(self, connection: Connection, request: Request) -> None:
        identity = connection.identity
        early = _EarlyReply(self, connection, request)
        context = RequestContext(identity.node_id, identity.member, identity.address, early)
        reply: Reply | None = None
        try:
            answer = await self._on_request(context, request)
            if not early.sent:  # else answered already: `answer` goes nowhere
                reply = _addressed(request, answer)
        except RequestFailed as failure:
            reply = _error_reply(request, failure.code, failure.message)
        except Exception:
            logger.exception(
                "on_request failed for a request from node %s", format_id(identity.node_id)
            )
            reply = _error_reply(request, ERROR_INTERNAL, "the request failed on the receiver")
        finally:
            connection.requests_in_flight -= 1
        if reply is not None and not early.sent:
            early.closed = True  # a late `reply_now` (the handler gave up first) is dropped
            await self._send_reply(connection, reply)

    async def _send_reply(self, connection: Connection, reply: Reply) -> None:
        if not connection.closed:
            with contextlib.suppress(ConnectionClosed):
                await connection.send([encode_frame(reply)])

    def _resolve_reply(self, connection: Connection, reply: Reply) -> None:
        pending = self._pending.get(reply.request_id)
        if pending is None or pending.connection is not connection or pending.future.done():
            return  # late (its caller timed out) or not ours
        if not isinstance(reply, pending.reply_type):
            raise FrameError(f"a {type(reply).__name__} answered request {reply.request_id}")
        if pending.on_reply is not None and not reply.error_code:
            try:
                pending.on_reply(reply)
            except Exception:  # the caller still gets the reply
                logger.exception("a reply hook failed; the request completes normally")
        pending.future.set_result(reply)

    # ------------------------------------------------------------ requests

    async def _request(
        self,
        peer_id: int,
        build: Callable[[int], Request],
        reply_type: type[ReplyT],
        timeout_s: float,
        on_reply: Callable[[Reply], None] | None = None,
    ) -> ReplyT:
        link = self._link(peer_id)
        request_id = next(self._request_ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        body = encode_frame(build(request_id))
        pending = _Pending(future, reply_type, peer_id, on_reply=on_reply)
        connection = link.idle_connection()
        if connection is not None:
            pending.connection = connection  # claimed: losing the connection fails it
            self._pending[request_id] = pending
            self._send_now(link, connection, body, messages=0)
        else:
            queued, dropped = link.queue.push(Outgoing(body, request_id))
            link.counters.messages_dropped += dropped
            if not queued:
                link.counters.requests_failed += 1
                raise RequestFailed(
                    ERROR_QUEUE_FULL, f"the send queue to node {format_id(peer_id)} is full"
                )
            self._pending[request_id] = pending
            link.wakeup.set()
        reply = await self._await_reply(request_id, pending, timeout_s, link.counters)
        return cast(ReplyT, reply)

    async def _await_reply(
        self, request_id: int, pending: _Pending, timeout_s: float, counters: LinkCounters | None
    ) -> Reply:
        def timed_out() -> RequestFailed:
            message = f"no answer from node {format_id(pending.peer_id)} within {timeout_s:.3g}s"
            return RequestFailed(ERROR_TIMEOUT, message)

        try:
            reply = await wait_owned(pending.future, max(timeout_s, 0.0), timed_out)
        except RequestFailed:
            if counters is not None:
                counters.requests_failed += 1
            raise
        finally:
            self._pending.pop(request_id, None)
        if reply.error_code:
            raise RequestFailed(reply.error_code, reply.error_message)
        return reply

    def give_up_requests(self, peer_id: int, code: str, message: str) -> None:
        """Fail every unanswered request sent to `peer_id` on its link (`propose`,
        `read_index`, `call`; not `call_address`) with `RequestFailed(code, message)`:
        the caller knows the answer is not worth waiting for (the node it asked no
        longer leads). A reply that comes later is dropped."""
        self._fail_where(
            lambda pending: pending.peer_id == peer_id and not pending.by_address, code, message
        )

    def _fail_where(self, matches: Callable[[_Pending], bool], code: str, message: str) -> None:
        """Fail every unanswered request that `matches`."""
        for request_id, pending in list(self._pending.items()):
            if matches(pending):
                self._fail(request_id, code, message)

    def _fail(self, request_id: int, code: str, message: str) -> None:
        pending = self._pending.get(request_id)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(RequestFailed(code, message))

    # ------------------------------------------------------------ plumbing

    def _detach(self, connection: Connection) -> None:
        """Forget `connection`: the link redials, requests sent on it fail."""
        connection.closed = True
        link = self._links.get(connection.identity.node_id)
        if link is not None and link.connection is connection:
            link.connection = None
            link.wakeup.set()
        self._fail_where(
            lambda pending: pending.connection is connection,
            ERROR_DISCONNECTED,
            "the connection was lost; the request may or may not have taken effect",
        )

    async def _discard(self, connection: Connection) -> None:
        self._detach(connection)
        self._connections.discard(connection)
        await connection.stream.close()

    def _close_soon(self, connection: Connection) -> None:
        self._detach(connection)
        self._spawn(self._discard(connection))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._track(task)
        return task

    def _track(self, task: asyncio.Task[None] | None) -> None:
        """Cancel `task` when the transport closes; log its error (None: finished)."""
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("transport task failed", exc_info=task.exception())


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `event` at most `timeout_s`; True if it was set.

    `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` can swallow a
    cancellation that races with its timeout, and a link task would never stop.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


class _EarlyReply:
    """`RequestContext.reply_now` for one request: writes its reply in this call
    when nothing else is being written on the connection (frames never interleave)."""

    __slots__ = ("_connection", "_request", "_transport", "closed", "sent")

    def __init__(self, transport: Transport, connection: Connection, request: Request) -> None:
        self._transport = transport
        self._connection = connection
        self._request = request
        self.sent = False
        self.closed = False  # answered the usual way: nothing more may go out

    def __call__(self, reply: Reply, along: Message | None = None) -> bool:
        connection, request, transport = self._connection, self._request, self._transport
        if self.sent:  # answered already: `along` still goes
            if along is not None:
                transport.send(connection.identity.node_id, along)
            return True
        if self.closed or not connection.idle():
            return False
        bodies = [encode_frame(_addressed(request, reply))]
        peer_id = connection.identity.node_id
        link = transport._links.get(peer_id) if along is not None else None
        # One write for both: a system call and a wake-up of the peer fewer.
        together = link is not None and link.connection is connection and not link.queue
        if together:
            assert along is not None and along.target == peer_id
            bodies.append(encode_frame(along))
        try:
            connection.send_now(bodies, lambda: transport._close_soon(connection))
        except ConnectionClosed:
            return False
        self.sent = True
        if link is not None and together:
            link.counters.messages_sent += 1
        elif along is not None:
            transport.send(peer_id, along)
        return True


_REPLY_TYPES: dict[type[Request], type[Reply]] = {
    Proposal: ProposalReply,
    ReadIndexRequest: ReadIndexReply,
    RpcRequest: RpcResponse,
}


def _addressed(request: Request, reply: Reply) -> Reply:
    """`reply`, checked to be the kind `request` takes, with its request id. Built
    directly, not with `dataclasses.replace` (which looks up the fields on every call):
    with this and the reply no longer addressed when it is not sent, a leader's CPU
    per write through a follower at 16 clients fell 4 % (docs/BENCHMARKS.md, issue 15)."""
    if not isinstance(reply, _REPLY_TYPES[type(request)]):
        raise TypeError(f"on_request answered a {type(request).__name__} with {reply!r}")
    request_id = request.request_id
    if reply.request_id == request_id:
        return reply
    if isinstance(reply, ProposalReply):
        return ProposalReply(request_id, reply.index, reply.error_code, reply.error_message)
    if isinstance(reply, ReadIndexReply):
        return ReadIndexReply(request_id, reply.index, reply.error_code, reply.error_message)
    return RpcResponse(request_id, reply.payload, reply.error_code, reply.error_message)


def _error_reply(request: Request, code: str, message: str) -> Reply:
    if isinstance(request, Proposal):
        return ProposalReply(request.request_id, error_code=code, error_message=message)
    if isinstance(request, ReadIndexRequest):
        return ReadIndexReply(request.request_id, error_code=code, error_message=message)
    return RpcResponse(request.request_id, error_code=code, error_message=message)
