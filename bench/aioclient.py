"""Minimal asyncio clients for the load generator: HTTP/1.1 keep-alive and RESP.

They are deliberately small (no pipelining, one request in flight per connection)
so that the generator spends little CPU per request and the same code path drives
every system. HTTP responses are framed by Content-Length or chunked encoding;
a chunked response can also be consumed as a stream of newline-separated messages
(etcd's /v3/watch gateway answers that way).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from bench.procs import LOOPBACK


class ConnectionClosed(Exception):
    """The server closed the connection (or it was never open)."""


class _Incomplete(Exception):
    pass


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; `request` sends one request and awaits the answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.host_header = f"{LOOPBACK}:{port}".encode()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closing = False
        self.on_message: Callable[[bytes], None] | None = None
        # perf_counter time at which the last complete response arrived.
        self.response_at = 0.0
        self._reset_response()

    def _reset_response(self) -> None:
        self.status = 0
        self.headers_done = False
        self.content_length = -1
        self.chunked = False
        self.body = bytearray()
        self.line_buffer = bytearray()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but behave like one.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            if self.closing:  # we closed it: nobody is waiting for an error
                self.waiter.cancel()
            else:
                self.waiter.set_exception(ConnectionClosed(str(exc or "closed by server")))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        with contextlib.suppress(_Incomplete):
            self._parse()

    # Parsing

    def _parse(self) -> None:
        if not self.headers_done:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                raise _Incomplete
            head = bytes(self.buffer[:end]).split(b"\r\n")
            del self.buffer[: end + 4]
            self.status = int(head[0].split(b" ", 2)[1])
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.content_length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
            self.headers_done = True
        if self.chunked:
            self._parse_chunks()
        else:
            length = max(self.content_length, 0)
            if len(self.buffer) < length:
                raise _Incomplete
            self.body = self.buffer[:length]
            del self.buffer[:length]
            self._finish()

    def _parse_chunks(self) -> None:
        while True:
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                raise _Incomplete
            size = int(bytes(self.buffer[:line_end]).split(b";")[0], 16)
            if len(self.buffer) < line_end + 2 + size + 2:
                raise _Incomplete
            chunk = self.buffer[line_end + 2 : line_end + 2 + size]
            del self.buffer[: line_end + 2 + size + 2]
            if size == 0:
                self._finish()
                return
            if self.on_message is not None:
                self._deliver_lines(chunk)
            else:
                self.body += chunk

    def _deliver_lines(self, chunk: bytearray) -> None:
        self.line_buffer += chunk
        while True:
            end = self.line_buffer.find(b"\n")
            if end < 0:
                return
            message = bytes(self.line_buffer[:end])
            del self.line_buffer[: end + 1]
            if message.strip() and self.on_message is not None:
                self.on_message(message)

    def _finish(self) -> None:
        status, body = self.status, bytes(self.body)
        self.response_at = time.perf_counter()
        self._reset_response()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))
        if self.buffer:
            with contextlib.suppress(_Incomplete):
                self._parse()

    # Requests

    def build(self, method: str, path: str, body: bytes | None = None,
              content_type: bytes = b"application/json") -> bytes:
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self.host_header]
        if body is not None:
            lines.append(b"Content-Type: " + content_type)
            lines.append(b"Content-Length: " + str(len(body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")

    def send(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.transport is None:
            raise ConnectionClosed("not connected")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    async def request_raw(self, raw: bytes) -> tuple[int, bytes]:
        return await self.send(raw)

    async def request(self, method: str, path: str, body: bytes | None = None,
                      content_type: bytes = b"application/json") -> tuple[int, bytes]:
        return await self.send(self.build(method, path, body, content_type))

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


async def http_connect(port: int, timeout: float = 10.0) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: HttpConnection(port), LOOPBACK, port), timeout)
    return protocol


class RespError(Exception):
    """An error reply from Redis."""


def _parse_resp(buffer: bytearray | bytes, position: int) -> tuple[Any, int]:
    line_end = buffer.find(b"\r\n", position)
    if line_end < 0:
        raise _Incomplete
    kind = buffer[position]
    line = bytes(buffer[position + 1 : line_end])
    position = line_end + 2
    if kind == 0x2B:  # +
        return line, position
    if kind == 0x2D:  # -
        return RespError(line.decode(errors="replace")), position
    if kind == 0x3A:  # :
        return int(line), position
    if kind == 0x24:  # $
        length = int(line)
        if length < 0:
            return None, position
        if len(buffer) < position + length + 2:
            raise _Incomplete
        return bytes(buffer[position : position + length]), position + length + 2
    if kind == 0x2A:  # *
        count = int(line)
        if count < 0:
            return None, position
        items = []
        for _ in range(count):
            item, position = _parse_resp(buffer, position)
            items.append(item)
        return items, position
    raise RespError(f"unexpected RESP type byte {kind!r}")


class RespConnection(asyncio.Protocol):
    """One Redis connection speaking RESP2; one command in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Any] | None = None
        self.closing = False
        self.response_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but behave like one.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            if self.closing:  # we closed it: nobody is waiting for an error
                self.waiter.cancel()
            else:
                self.waiter.set_exception(ConnectionClosed(str(exc or "closed by server")))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.buffer and self.waiter is not None and not self.waiter.done():
            try:
                value, position = _parse_resp(self.buffer, 0)
            except _Incomplete:
                return
            del self.buffer[:position]
            self.response_at = time.perf_counter()
            self.waiter.set_result(value)

    @staticmethod
    def encode(*arguments: bytes | str | int) -> bytes:
        parts = [b"*%d\r\n" % len(arguments)]
        for argument in arguments:
            if isinstance(argument, int):
                argument = str(argument)
            if isinstance(argument, str):
                argument = argument.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(argument), argument))
        return b"".join(parts)

    def send(self, raw: bytes) -> asyncio.Future[Any]:
        if self.transport is None:
            raise ConnectionClosed("not connected")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.waiter

    async def command(self, *arguments: bytes | str | int) -> Any:
        value = await self.send(self.encode(*arguments))
        if isinstance(value, RespError):
            raise value
        return value

    async def pipeline(self, raw_commands: list[bytes]) -> list[Any]:
        """Send many commands at once (used only to preload data, never to measure)."""
        if self.transport is None:
            raise ConnectionClosed("not connected")
        results: list[Any] = []
        self.transport.write(b"".join(raw_commands))
        for _ in raw_commands:
            self.waiter = asyncio.get_running_loop().create_future()
            self.data_received(b"")
            results.append(await self.waiter)
        return results

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


async def resp_connect(port: int, timeout: float = 10.0) -> RespConnection:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(RespConnection, LOOPBACK, port), timeout)
    return protocol
