"""The bench's minimal HTTP and RESP clients parse what servers send, however it is split.

Like h11's tests: each input is fed whole, one byte at a time, and followed by the start
of the next response.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bench.aioclient import HttpConnection, RespConnection, RespError, _Incomplete, _parse_resp


class _FakeTransport:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        pass


def _feed(protocol: Any, data: bytes, byte_by_byte: bool) -> None:
    if byte_by_byte:
        for index in range(len(data)):
            protocol.data_received(data[index : index + 1])
    else:
        protocol.data_received(data)


CONTENT_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello"
CHUNKED = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n")


@pytest.mark.parametrize("byte_by_byte", [False, True])
@pytest.mark.parametrize(("raw", "expected"), [(CONTENT_LENGTH, (200, b"hello")),
                                               (CHUNKED, (201, b"abcde"))])
def test_http_response_framing(raw: bytes, expected: tuple[int, bytes],
                               byte_by_byte: bool) -> None:
    async def scenario() -> None:
        connection = HttpConnection(1234)
        connection.connection_made(_FakeTransport())  # type: ignore[arg-type]
        first = connection.send(b"GET / HTTP/1.1\r\n\r\n")
        _feed(connection, raw + CONTENT_LENGTH[:10], byte_by_byte)
        assert first.done() and first.result() == expected
        second = connection.send(b"GET / HTTP/1.1\r\n\r\n")
        _feed(connection, CONTENT_LENGTH[10:], byte_by_byte)
        assert second.done() and second.result() == (200, b"hello")

    asyncio.run(scenario())


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_http_stream_of_messages(byte_by_byte: bool) -> None:
    async def scenario() -> None:
        connection = HttpConnection(1234)
        connection.connection_made(_FakeTransport())  # type: ignore[arg-type]
        messages: list[bytes] = []
        connection.on_message = messages.append
        connection.send(b"POST /v3/watch HTTP/1.1\r\n\r\n")
        body = b'{"a":1}\n{"b":2}\n{"c":3}\n'
        raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n" % (10, body[:10]) + b"%x\r\n%s\r\n" % (14, body[10:]))
        _feed(connection, raw, byte_by_byte)
        assert messages == [b'{"a":1}', b'{"b":2}', b'{"c":3}']

    asyncio.run(scenario())


def test_resp_values() -> None:
    raw = b"*3\r\n$3\r\nabc\r\n:42\r\n*2\r\n+OK\r\n$-1\r\n"
    value, position = _parse_resp(raw, 0)
    assert value == [b"abc", 42, [b"OK", None]] and position == len(raw)
    error, _ = _parse_resp(b"-ERR nope\r\n", 0)
    assert isinstance(error, RespError)
    for cut in range(len(raw)):
        with pytest.raises(_Incomplete):
            _parse_resp(raw[:cut], 0)


def test_resp_connection_byte_by_byte() -> None:
    async def scenario() -> None:
        connection = RespConnection()
        connection.connection_made(_FakeTransport())  # type: ignore[arg-type]
        future = connection.send(RespConnection.encode("XADD", "log", "*", "d", b"x"))
        _feed(connection, b"$15\r\n1700000000000-0\r\n", True)
        assert future.result() == b"1700000000000-0"

    asyncio.run(scenario())


def test_resp_encode() -> None:
    assert RespConnection.encode("GET", b"k", 7) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n7\r\n"
