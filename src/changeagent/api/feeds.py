"""Streaming feeds on GET /changes, after CouchDB's `_changes` feeds.

`feed=continuous`: newline-delimited JSON, one change per line as it commits.
`feed=eventsource` (also chosen by `Accept: text/event-stream`): Server-Sent Events,
`id: <_id>`, `event: change`, `data: <change>`; `Last-Event-ID` resumes after that id,
so a browser's EventSource reconnects with no client code.

A stream is a long-poll that does not end: it waits (`wait_changes`, the same
grouped waiters as long-polls) for the changes after the last one it sent, writes
them, and waits again. When nothing commits for `heartbeat` ms it writes a heartbeat
(an empty line; an SSE comment) so proxies keep an idle stream open. When purge
removed changes after the stream's position, it says so first (`event: missed` /
a `missedChanges` line) with the first id still stored. It ends after `limit`
changes if given, when the consumer goes away (found at the next write, at the latest
the next heartbeat), when the node shuts down, or after `--stream-max-age` (default
an hour: a consumer then reconnects, maybe to another member, and resumes after its
last id, as EventSource does by itself).

Limits: at most `--max-streams` streams at once (503 beyond). A write waits while
the socket's buffer is full (aiohttp's flow control bounds it), so a consumer that
reads too slowly holds only its own buffer; one that does not take a write within
`--stream-send-timeout` is disconnected and resumes from its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http import HttpVersion11

from changeagent.api.caching import NO_STORE
from changeagent.api.context import state_of
from changeagent.api.errors import ApiError
from changeagent.api.params import INDEX_MAX, integer_parameter
from changeagent.node.query import ChangeQuery, PageResult, change_id
from changeagent.node.waiters import KEEP, Keep

log = logging.getLogger(__name__)

FEEDS = ("continuous", "eventsource")
EVENT_STREAM = "text/event-stream"
HEARTBEAT_MS_DEFAULT = 30_000
HEARTBEAT_MS_MIN = 100


@dataclass(frozen=True, slots=True)
class FeedFormat:
    """How one kind of feed frames changes, heartbeats and a purge gap."""

    content_type: str
    heartbeat: bytes

    def change(self, body: bytes) -> bytes:
        raise NotImplementedError

    def missed(self, first_retained: int) -> bytes:
        raise NotImplementedError


class ContinuousFormat(FeedFormat):
    def change(self, body: bytes) -> bytes:
        return body + b"\n"

    def missed(self, first_retained: int) -> bytes:
        return b'{"missedChanges":true,"firstRetained":%d}\n' % first_retained


class EventSourceFormat(FeedFormat):
    def change(self, body: bytes) -> bytes:
        return b"id: %s\nevent: change\ndata: %s\n\n" % (change_id(body), body)

    def missed(self, first_retained: int) -> bytes:
        return b'event: missed\ndata: {"firstRetained":%d}\n\n' % first_retained


FORMATS: dict[str, FeedFormat] = {
    # Stored changes are compact JSON: they never hold a raw newline.
    "continuous": ContinuousFormat("application/x-ndjson", b"\n"),
    "eventsource": EventSourceFormat(EVENT_STREAM, b": heartbeat\n\n"),
}


def reset(transport: asyncio.BaseTransport) -> None:
    """Drop a connection at once, with what it never took: a TCP reset (SO_LINGER 0)
    frees the kernel's send buffer too, where a close would go on sending it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


def feed_kind(request: web.Request) -> str | None:
    """The feed asked for, or None for an ordinary page or long-poll."""
    feed = request.query.get("feed")
    if feed is None:
        return "eventsource" if EVENT_STREAM in request.headers.get("Accept", "") else None
    if feed not in FEEDS:
        raise ApiError(400, f"parameter 'feed' must be continuous or eventsource, got {feed!r}")
    return feed


@dataclass(frozen=True, slots=True)
class FeedRequest:
    """A feed's parameters, checked on every GET /changes (a bad one is a 400 also
    when no feed is asked for, like any other parameter)."""

    kind: str | None
    heartbeat_s: float
    last_event_id: int | None

    @classmethod
    def of(cls, request: web.Request, block_max_s: float) -> FeedRequest:
        heartbeat_ms = integer_parameter(
            request, "heartbeat", HEARTBEAT_MS_DEFAULT, HEARTBEAT_MS_MIN, int(block_max_s * 1000)
        )
        return cls(feed_kind(request), heartbeat_ms / 1000, _last_event_id(request))

    def start(self, query: ChangeQuery) -> int:
        """`since`, or after `Last-Event-ID` when an EventSource reconnects."""
        return query.since if self.last_event_id is None else self.last_event_id


def _last_event_id(request: web.Request) -> int | None:
    last_event = request.headers.get("Last-Event-ID")
    if not last_event:
        return None
    if not (last_event.isascii() and last_event.isdigit()) or int(last_event) > INDEX_MAX:
        raise ApiError(400, f"Last-Event-ID must be a change id, got {last_event[:40]!r}")
    return int(last_event)


async def serve_feed(
    request: web.Request, kind: str, feed: FeedRequest, query: ChangeQuery
) -> web.StreamResponse:
    state = state_of(request)
    # Without `limit` a stream goes on until it ends; with it, after that many.
    remaining = query.limit if "limit" in request.query else None
    position = feed.start(query)
    state.streams.take()
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": FORMATS[kind].content_type,
                "Cache-Control": NO_STORE,
                "X-Accel-Buffering": "no",  # nginx: pass each write on at once
            }
        )
        if request.version >= HttpVersion11:
            response.enable_chunked_encoding()  # chunks the commit notification writes
        await response.prepare(request)
        stream = FeedStream(response, FORMATS[kind], query, position, remaining)
        await stream.run(request, feed.heartbeat_s)
        return response
    finally:
        state.streams.give_back()


# A stream whose socket holds more than this unsent is written by its task, which
# waits for the consumer (and drops it after --stream-send-timeout).
DIRECT_WRITE_BUFFER_BYTES_MAX = 1 << 20


class SharedChunks:
    """The chunk (HTTP/1.1 chunked framing around the frames of a page) that every
    stream of one group writes for one commit, built once per page and format."""

    def __init__(self) -> None:
        self._last: dict[FeedFormat, tuple[PageResult, bytes]] = {}

    def chunk(self, page: PageResult, format: FeedFormat) -> bytes:
        cached = self._last.get(format)
        if cached is not None and cached[0] is page:
            return cached[1]
        data = frame(page, format, page.bodies)
        chunk = b"%x\r\n%s\r\n" % (len(data), data)
        self._last[format] = (page, chunk)
        return chunk


SHARED_CHUNKS = SharedChunks()


def frame(page: PageResult, format: FeedFormat, bodies: list[bytes]) -> bytes:
    """The frames of `bodies` (changes of `page`), after a purge gap if it has one."""
    parts = [format.missed(page.first_retained)] if page.missed else []
    parts += [format.change(body) for body in bodies]
    return b"".join(parts)


@dataclass
class FeedStream:
    response: web.StreamResponse
    format: FeedFormat
    query: ChangeQuery
    position: int  # the last change sent
    remaining: int | None
    transport: asyncio.Transport | None = None

    async def run(self, request: web.Request, heartbeat_s: float) -> None:
        state = state_of(request)
        node = state.node
        page_max = node.limits.limit_max
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + state.streams.max_age_s
        # Written by the commit notification itself while the task waits (see hook).
        if self.response.chunked and self.remaining is None:
            self.transport = request.transport
        while not node.closing and self.remaining != 0:
            left_s = ends_at - loop.time()
            if left_s <= 0:
                break
            page_limit = page_max if self.remaining is None else min(page_max, self.remaining)
            query = self.query.with_since(self.position, page_limit)
            page = await node.wait_changes(query, min(heartbeat_s, left_s), self.hook)
            if not await self._send(request, self._frame(page)):
                return
        await self.response.write_eof()

    def hook(self, page: PageResult) -> bool | Keep:
        """Called by the commit notification with the page after this stream's
        position: write it straight to the socket and go on waiting (KEEP), unless
        the socket is backed up or closing (then the task writes it, and waits)."""
        transport = self.transport
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > DIRECT_WRITE_BUFFER_BYTES_MAX
            or not page.bodies
        ):
            return False
        transport.write(SHARED_CHUNKS.chunk(page, self.format))
        self.position = page.last_id()
        return KEEP

    def _frame(self, page: PageResult) -> bytes:
        """What the task writes: changes after the position (the hook may have sent
        some while a heartbeat's wait ran), or a heartbeat when there are none."""
        position = self.position
        bodies = page.bodies
        if bodies and int(change_id(bodies[0])) <= position:
            bodies = [body for body in bodies if int(change_id(body)) > position]
        if bodies:
            self.position = int(change_id(bodies[-1]))
            if self.remaining is not None:
                self.remaining -= len(bodies)
        elif not page.missed:
            return self.format.heartbeat
        return frame(page, self.format, bodies)

    async def _send(self, request: web.Request, data: bytes) -> bool:
        """Write, or end the stream of a consumer that is gone or too slow."""
        timeout_s = state_of(request).streams.send_timeout_s
        try:
            await asyncio.wait_for(self.response.write(data), timeout_s)
        except TimeoutError:
            log.info("stream to %s dropped: no data taken in %g s", request.remote, timeout_s)
            if request.transport is not None:
                reset(request.transport)
            return False
        except ConnectionError:
            return False
        return True
