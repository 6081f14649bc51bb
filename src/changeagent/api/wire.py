"""Lean `200 application/json` answers for the hot paths (POST /changes, GET /changes).

aiohttp's general response path (a header multidict, `prepare`, header
serialisation, a writer with flow control) costs tens of microseconds per
response, which is most of a long-poll wake-up and a good share of a write. Here
the whole answer — status line, headers, body — is one `bytes` object written to
the transport in one call. The headers are exactly those aiohttp sends for
`web.Response(body=..., content_type="application/json")` on a keep-alive
HTTP/1.1 request: `Content-Type`, `Content-Length`, `Date`, `Server`.

Anything else (HTTP/1.0, `Connection: close`, HEAD, a closing transport, an
`on_response_prepare` signal, headers added by a middleware) takes aiohttp's
normal path, so the shortcut never changes what a client sees.

Long-polls go one step further: the API registers a delivery hook with the node's
`CommitWaiters` (`wait(..., hook=...)`), which writes the group's shared response
bytes to every woken consumer inside `notify`, before any task resumes. The
woken handler then returns an already-sent `JsonResponse`, which only finishes
aiohttp's bookkeeping.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Protocol

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

from changeagent.node.query import PageResult
from changeagent.raft import Entry

JSON = "application/json"
# After the status line; the last %s: extra header lines (caching), each ending in CRLF.
_HEADERS = (
    b"Content-Type: application/json\r\nContent-Length: %d\r\n"
    b"Date: %s\r\nServer: " + SERVER_SOFTWARE.encode() + b"\r\n%s\r\n"
)
_HEAD = b"HTTP/1.1 200 OK\r\n" + _HEADERS
_STATUS_HEAD = b"HTTP/1.1 %d %s\r\n" + _HEADERS
# A long-poll's answer depends on when it was asked: no cache may keep it.
NO_STORE_LINE = b"Cache-Control: no-store\r\n"


class _DateCache:
    """The `Date` header value, formatted once per second (as aiohttp does)."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._value = email.utils.formatdate(second, usegmt=True).encode()
            self._second = second
        return self._value


_DATE = _DateCache()


def json_200(body: bytes, header_lines: bytes = b"") -> bytes:
    """The complete HTTP/1.1 response carrying `body`, with extra header lines."""
    return _HEAD % (len(body), _DATE.value(), header_lines) + body


def error_answer(status: int, message: str, headers: Mapping[str, str]) -> bytes:
    """The complete answer `api/errors.py`'s `json_error` makes: `{"error": message}`
    with `status` and extra `headers` (for the front door, api/front_door.py)."""
    body = orjson.dumps({"error": message})
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
    phrase = HTTPStatus(status).phrase.encode()
    return _STATUS_HEAD % (status, phrase, len(body), _DATE.value(), lines) + body


class _SharedWire:
    """One-entry cache: every consumer woken by one commit with the same query gets
    the same body object, so its response bytes are built once per wake-up. These
    answer long-polls, so they are `no-store`."""

    __slots__ = ("_body", "_date", "_wire")

    def __init__(self) -> None:
        self._body: bytes | None = None
        self._date = b""
        self._wire = b""

    def wire(self, body: bytes) -> bytes:
        date = _DATE.value()
        if body is not self._body or date is not self._date:
            self._wire = _HEAD % (len(body), date, NO_STORE_LINE) + body
            self._body, self._date = body, date
        return self._wire


_SHARED = _SharedWire()


def can_write_directly(request: web.BaseRequest) -> bool:
    """True when the prebuilt bytes are exactly what aiohttp would send."""
    transport = request.transport
    if (
        transport is None
        or transport.is_closing()
        or request.version != HttpVersion11
        or not request.keep_alive
        or request.method == "HEAD"
    ):
        return False
    match_info = getattr(request, "match_info", None)
    if match_info is not None:
        for app in match_info.apps:
            if app.on_response_prepare:
                return False
    return True


class JsonResponse(web.Response):
    """`200 application/json` with `body` and optional caching headers, written in
    one transport call when `can_write_directly` allows; otherwise (or once a
    middleware has added a header) exactly aiohttp's normal response."""

    def __init__(
        self, body: bytes, *, already_sent: bool = False, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(body=body, content_type=JSON, headers=headers)
        self._json = body
        self._already_sent = already_sent
        self._extra = headers or {}

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        if self._already_sent:
            self._finish(len(self._json))
        elif len(self.headers) == 1 + len(self._extra) and can_write_directly(request):
            assert request.transport is not None  # checked by can_write_directly
            lines = "".join(f"{name}: {value}\r\n" for name, value in self._extra.items())
            request.transport.write(json_200(self._json, lines.encode()))
            self._finish(len(self._json))
        else:
            return await super().prepare(request)
        await request.writer.drain()  # flow control, as aiohttp's own writes do
        return None

    def _finish(self, body_length: int) -> None:
        self._eof_sent = True
        self._keep_alive = True
        self._body_length = body_length


class Connected(Protocol):
    """What a delivery writes to: an aiohttp request, or a connection of the front door."""

    @property
    def transport(self) -> asyncio.Transport | None: ...


class WriteDelivery:
    """Writes the answer to one POST /changes the moment its change is applied
    (`RaftDriver.propose`'s `on_applied`), from inside the Ready loop: the handler's
    task resumes two loop iterations later (the commit wait's callback, then the task)
    and only finishes aiohttp's bookkeeping. Once the handler stops waiting (an error,
    a timeout) it calls `close`, and a late call writes nothing. Once `sent`, the
    handler must not answer again, even if its wait then fails (a commit timeout
    firing between the two): `sent_body` is the answer the client has."""

    __slots__ = ("_request", "closed", "sent_body")

    def __init__(self, request: Connected) -> None:
        self._request = request
        self.sent_body: bytes | None = None
        self.closed = False

    @property
    def sent(self) -> bool:
        return self.sent_body is not None

    def __call__(self, entry: Entry) -> None:
        transport = self._request.transport
        if self.closed or self.sent or transport is None or transport.is_closing():
            return  # the handler answers (or aiohttp notices the disconnect)
        transport.write(json_200(entry.data))
        self.sent_body = entry.data

    def close(self) -> None:
        self.closed = True


class LongPollDelivery:
    """The delivery hook of one waiting GET /changes (see `CommitWaiters.wait`)."""

    __slots__ = ("_request", "sent")

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self.sent = False

    def __call__(self, page: PageResult) -> bool:
        transport = self._request.transport
        if transport is None or transport.is_closing():
            return False  # the handler answers (or aiohttp notices the disconnect)
        transport.write(_SHARED.wire(page.encode()))
        self.sent = True
        return True
