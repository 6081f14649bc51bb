"""The API port's front door: plain keep-alive writes answered without aiohttp's
request machinery; every other request handed to aiohttp, unchanged.

Why: a write's HTTP path through aiohttp (its parser's message, a request object,
the connection's task, the router, the middleware, a response) is most of what a
standalone write costs. `python -m bench.http_layer` measured a bare path beside it
at 1.40x / 1.41x / 1.71x aiohttp's writes/s for 1 / 16 / 64 clients standalone, and
1.39x / 1.34x at 16 / 64 clients through 3 members (docs/BENCHMARKS.md, issue 15).

Every connection to the API port starts with a `FrontConnection`. It answers a
request itself only when it is a plain write: `POST <prefix>/changes` over HTTP/1.1
keep-alive, one `Content-Length` of 1 byte up to the body limit, `Content-Type:
application/json` exactly, no `Transfer-Encoding`, `Content-Encoding`, `Expect`,
`Upgrade`, `Sec-Fetch-Site` (a browser's), `Connection` other than `keep-alive`,
query string, bare LF or head over `HEAD_BYTES_MAX`, an `Idempotency-Key` and
`Authorization` of ASCII (the key within its limit), and a head and body that
httptools (the parser uvicorn uses; llhttp, as aiohttp's) reads as exactly one
message that ends where the framing here says. The answer is what the API would
send: the same node call (`store_change`), the same bytes (api/wire.py), errors
through the same mapping (`error_parts`), Basic credentials through the same
`Authenticator`, counted in the same metrics as route "/changes".

Anything else (a read, a peer's link, a chunked body, an oversized or malformed
request, a query string) is handed over at a request boundary: once the writes
before it are answered, the connection's protocol becomes aiohttp's
(`transport.set_protocol`), which gets every byte not yet consumed, starting at
that request, and keeps the connection for the rest of its life. aiohttp then
answers exactly as it would have. A connection's requests are answered one at a
time, in order, as aiohttp does (the next may start once the answer before it is
written, before that write's task has ended); pipelined requests wait in the buffer
(up to `buffer_bytes_max`, then reading pauses). A connection that has sent a write
closes after KEEPALIVE_S with no bytes and no answer. Not installed with
--access-log, whose records come from aiohttp's access-log hook.

Shutdown (`GracefulShutdown`): when the listener stops, idle connections close and
busy ones close after their answer; the drain counts writes in flight here (`busy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import cast

import httptools
from aiohttp import web

from changeagent.api.auth import Authenticator
from changeagent.api.changes import store_change
from changeagent.api.errors import INTERNAL_ERROR, error_parts
from changeagent.api.wire import WriteDelivery, error_answer, json_200
from changeagent.change import parse_change_body
from changeagent.eager import start_now
from changeagent.metrics import NodeMetrics, add_duration
from changeagent.node.node import Node
from changeagent.raft import Entry

log = logging.getLogger(__name__)

HEAD_BYTES_MAX = 8190  # longer heads go to aiohttp (its own line limit is 8190)
KEEPALIVE_S = 75.0  # aiohttp's keepalive_timeout: an idle connection served here closes
CHANGES_ROUTE = "/changes"  # the metrics' route label (api/observe.py)
_METHOD = b"POST "
# The headers a plain write may carry once each, and those that make it not plain.
_KEPT = frozenset(
    {b"content-length", b"content-type", b"connection", b"authorization", b"idempotency-key"}
)
_REFUSED = frozenset(
    {b"transfer-encoding", b"content-encoding", b"expect", b"upgrade", b"sec-fetch-site"}
)


class FrontDoor:
    """What every connection of the API's listeners shares, and the connections
    not (yet) handed to aiohttp. `aiohttp_protocol` (the runner's `web.Server`)
    is set once the runner is set up."""

    def __init__(
        self,
        node: Node,
        prefix: str,
        authenticator: Authenticator | None,
        metrics: NodeMetrics,
    ) -> None:
        self.node = node
        self.path = (prefix + CHANGES_ROUTE).encode()
        self.request_line = _METHOD + self.path + b" HTTP/1.1\r\n"  # exactly, in one line
        self.authenticator = authenticator
        self.aiohttp_protocol: Callable[[], asyncio.Protocol] | None = None
        limits = node.limits
        self.body_bytes_max = limits.body_bytes_max
        self.key_bytes_max = limits.idempotency_key_bytes_max
        # A request's head and body, and as much again of pipelined ones.
        self.buffer_bytes_max = 2 * (HEAD_BYTES_MAX + limits.body_bytes_max)
        self.connections: set[FrontConnection] = set()
        self.closing = False
        self._counts = metrics.requests
        self._numbers: dict[int, list[float]] = {}  # by status
        self._all_closed = asyncio.Event()

    def connection(self) -> FrontConnection:
        """The protocol factory of the listeners."""
        return FrontConnection(self)

    def count(self, status: int, duration_s: float) -> None:
        numbers = self._numbers.get(status)
        if numbers is None:
            numbers = self._numbers[status] = self._counts.numbers(CHANGES_ROUTE, "POST", status)
        add_duration(numbers, duration_s)

    @property
    def busy(self) -> bool:
        """True while a write is being answered here to a client still connected."""
        return any(connection.answering for connection in self.connections)

    def close(self) -> None:
        """Stop serving: idle connections close now, busy ones after their answer."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_when_idle()
        self._note_closed()

    async def wait_closed(self, timeout_s: float) -> None:
        """Until every connection served here has closed, for at most `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._all_closed.wait()

    def forget(self, connection: FrontConnection) -> None:
        self.connections.discard(connection)
        self._note_closed()

    def _note_closed(self) -> None:
        if self.closing and not self.connections:
            self._all_closed.set()


class _Write:
    """A plain write's head, read: where its body starts and ends in the buffer.
    (Not a frozen dataclass: its `__init__` costs a microsecond a write more.)"""

    __slots__ = ("authorization", "body_start", "end", "key")

    def __init__(self, body_start: int, end: int, authorization: str | None, key: str) -> None:
        self.body_start = body_start
        self.end = end
        self.authorization = authorization
        self.key = key


class _Head:
    """httptools' callbacks for one message: what the front door needs of it."""

    __slots__ = ("found", "headers_complete", "messages_complete", "plain")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.found: dict[bytes, bytes] = {}
        self.plain = True
        self.headers_complete = 0
        self.messages_complete = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _KEPT:
            if name in self.found:
                self.plain = False  # twice: aiohttp decides what that means
            self.found[name] = value
        elif name in _REFUSED:
            self.plain = False

    def on_headers_complete(self) -> None:
        self.headers_complete += 1

    def on_message_complete(self) -> None:
        self.messages_complete += 1


class FrontConnection(asyncio.Protocol):
    """One connection, until (if ever) it is handed to aiohttp. See the module."""

    def __init__(self, door: FrontDoor) -> None:
        self._door = door
        self.transport: asyncio.Transport | None = None
        self.answering = False  # a write of this connection is being answered
        self._serial = 0  # of the write being answered, or the last one
        self._buffer = bytearray()  # bytes received, from the first request not answered
        # Made with the first write: most connections that are not a writer's are
        # handed over at their first bytes, and the connection costs them nothing more.
        self._head: _Head | None = None
        self._parser: httptools.HttpRequestParser | None = None
        self._write: _Write | None = None  # the first request's head, read
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self._reading_paused = False
        self._writing_paused = False
        self._closing = False
        self._active_s = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        door = self._door
        if door.closing:
            transport.close()
            return
        door.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as aiohttp does: answers go out at once
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        if not self.answering:
            self._serve()
        # Checked after serving too: one read may bring a write and many more behind it.
        if (
            self.answering
            and not self._reading_paused
            and len(self._buffer) > self._door.buffer_bytes_max
        ):
            self._pause_reading()

    def eof_received(self) -> bool | None:
        return None  # as aiohttp: the transport closes; a write in flight still commits

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._stop_timer()
        self._door.forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._buffer and not self.answering:
            self._serve()

    # Serving

    def close_when_idle(self) -> None:
        """Close once the write being answered (if any) is; read nothing more."""
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        if not self.answering:
            transport.close()
        elif not self._reading_paused:
            self._pause_reading()

    def _serve(self) -> None:
        """Answer the first request in the buffer if it is whole and plain, hand the
        connection to aiohttp if it is not plain, or wait for more of it."""
        transport = self.transport
        if transport is None or self._writing_paused or self._closing:
            return
        buffer = self._buffer
        write = self._write
        if write is None and not _METHOD.startswith(buffer[: len(_METHOD)]):
            return self._hand_over()  # a read's connection: no timer, no more work here
        loop = asyncio.get_running_loop()
        self._active_s = loop.time()
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(self._active_s + KEEPALIVE_S, self._check_idle)
        if self._parser is None:  # the first write's first bytes
            self._head = _Head()
            self._parser = httptools.HttpRequestParser(self._head)
        if write is None:
            head_end = buffer.find(b"\r\n\r\n", 0, HEAD_BYTES_MAX)
            if head_end < 0:
                if len(buffer) >= HEAD_BYTES_MAX:
                    self._hand_over()
                return None
            write = self._write = self._read_head(bytes(buffer[: head_end + 4]))
            if write is None:
                return self._hand_over()
        if len(buffer) < write.end:
            return None  # more of the body to come
        body = bytes(buffer[write.body_start : write.end])
        if not self._body_ends_message(body):
            return self._hand_over()
        del buffer[: write.end]
        self._write = None
        if self._reading_paused and len(buffer) <= self._door.buffer_bytes_max:
            self._reading_paused = False
            transport.resume_reading()
        self.answering = True
        self._serial += 1
        task = start_now(self._answer(write, body, self._serial))
        if task is not None:  # it waits (for the commit): keep it until it ends
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return None

    def _read_head(self, head: bytes) -> _Write | None:
        """The write `head` starts, if it is plain (see the module); else None."""
        fields, parser = self._head, self._parser
        assert fields is not None and parser is not None  # made by `_serve`
        fields.reset()
        try:
            parser.feed_data(head)
        except httptools.HttpParserError:
            return None
        if not (fields.plain and fields.headers_complete == 1 and not fields.messages_complete):
            return None
        door = self._door
        # llhttp read the request line (and refuses a bare LF anywhere in a head); this
        # one comparison stands for method, target and version.
        if not head.startswith(door.request_line):
            return None
        found = fields.found
        length = found.get(b"content-length", b"")
        content_type = found.get(b"content-type", b"")
        connection = found.get(b"connection", b"keep-alive")
        key = found.get(b"idempotency-key", b"")
        authorization = found.get(b"authorization")
        if (
            not length.isdigit()
            or not 0 < int(length) <= door.body_bytes_max
            or content_type.lower() != b"application/json"
            or connection.lower() != b"keep-alive"
            or not key.isascii()
            or key != key.strip()
            or len(key) > door.key_bytes_max
            or (authorization is not None and not authorization.isascii())
        ):
            return None
        return _Write(
            len(head),
            len(head) + int(length),
            None if authorization is None else authorization.decode(),
            key.decode(),
        )

    def _body_ends_message(self, body: bytes) -> bool:
        """httptools, given the body, ends exactly one message with its last byte."""
        fields, parser = self._head, self._parser
        assert fields is not None and parser is not None  # made by `_serve`
        try:
            parser.feed_data(body)
        except httptools.HttpParserError:
            return False
        return fields.messages_complete == 1

    async def _answer(self, write: _Write, body: bytes, serial: int) -> None:
        """The API's POST /changes, for one plain write (api/changes.py, `post_change`)."""
        door = self._door
        started = time.perf_counter()
        try:
            authenticator = door.authenticator
            if authenticator is not None and not authenticator.is_cached(write.authorization):
                await authenticator.check(write.authorization)
            change = parse_change_body(body)
            # As in the API, the Ready loop itself writes the answer once applied.
            delivery = _Delivery(self, serial)
            stored = await store_change(door.node, change, write.key, delivery)
            if not delivery.sent:
                self._send(json_200(stored))
            status = 200
        except Exception as error:
            status = self._send_error(error)
        door.count(status, time.perf_counter() - started)
        self.answered(serial)

    def _send(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _send_error(self, error: Exception) -> int:
        parts = error_parts(error)
        if parts is None:
            log.error("unexpected error serving POST %s", self._door.path.decode(), exc_info=error)
            parts = (500, INTERNAL_ERROR, {})
        status, message, headers = parts
        self._send(error_answer(status, message, headers))
        return status

    def answered(self, serial: int) -> None:
        """Write `serial` is answered: the next request may start. Called by the write's
        delivery as it writes the answer from the apply step (the client may send its
        next request before the write's own task resumes, two loop iterations later,
        and that request need not wait for it), else as that task ends."""
        if serial != self._serial or not self.answering:
            return
        self.answering = False
        transport = self.transport
        if transport is None:
            return
        if self._closing:
            transport.close()
        elif self._buffer:  # not from here: this may be the Ready loop's apply step
            asyncio.get_running_loop().call_soon(self._serve)
        else:
            self._active_s = asyncio.get_running_loop().time()

    def _hand_over(self) -> None:
        """From now on aiohttp serves this connection, from the first byte not consumed."""
        transport = self.transport
        aiohttp_protocol = self._door.aiohttp_protocol
        assert transport is not None and aiohttp_protocol is not None
        self._stop_timer()
        self._door.forget(self)
        self.transport = None
        handler = aiohttp_protocol()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._writing_paused:
            handler.pause_writing()
        if self._reading_paused:
            transport.resume_reading()  # aiohttp's flow control from here on
        data = bytes(self._buffer)
        self._buffer.clear()
        if data:
            handler.data_received(data)

    def _pause_reading(self) -> None:
        assert self.transport is not None
        self._reading_paused = True
        self.transport.pause_reading()

    def _check_idle(self) -> None:
        """Closes the connection after KEEPALIVE_S with no bytes and no answer."""
        self._idle_timer = None
        transport = self.transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        due_s = self._active_s + KEEPALIVE_S
        if self.answering:
            due_s = loop.time() + KEEPALIVE_S
        elif loop.time() >= due_s:
            transport.close()
            return
        self._idle_timer = loop.call_at(due_s, self._check_idle)

    def _stop_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None


class _Delivery(WriteDelivery):
    """The API's `WriteDelivery`, which also frees its connection for the next request."""

    __slots__ = ("_connection", "_serial")

    def __init__(self, connection: FrontConnection, serial: int) -> None:
        super().__init__(connection)
        self._connection = connection
        self._serial = serial

    def __call__(self, entry: Entry) -> None:
        super().__call__(entry)
        if self.sent:
            self._connection.answered(self._serial)


class FrontDoorSite(web.TCPSite):
    """aiohttp's TCP site, with `door`'s connections as each connection's first
    protocol (aiohttp's `TCPSite.start` with another protocol factory)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        door: FrontDoor,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog)
        self._door = door

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._door.connection,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await super().stop()
        self._door.close()
