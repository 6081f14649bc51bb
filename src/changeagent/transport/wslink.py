"""The WebSocket carrier: peer links on the API port, framed by `wsframes`.

A `WsLinkProtocol` owns the socket once the HTTP upgrade is done. Frames are
decoded in `data_received` and, once the transport serves the connection
(`serve_frames`), handed to it in that same call: no queue, no reader task
woken per frame. Writes put all of a batch's frames in one `transport.write`.

Dialing (`WebSocketDialer`) sends a fixed upgrade request and checks the 101 answer;
accepting (`adopt`) takes the socket from aiohttp after its upgrade, before
the first frame, and tells aiohttp's protocol when the connection is lost so
the server's bookkeeping stays right.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

from changeagent.transport.codec import decode_frame
from changeagent.transport.errors import FrameError
from changeagent.transport.frames import Frame
from changeagent.transport.streams import (
    CLUSTER_PATH,
    ConnectionClosed,
    Dialer,
    FrameStream,
    split_address,
)
from changeagent.transport.wsframes import (
    CLOSE_NORMAL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    WsFrameParser,
    accept_key,
    encode_ws_frame,
)

_RESPONSE_HEAD_BYTES_MAX = 16 * 1024
_CLOSE_TIMEOUT_S = 2.0


class WsLinkProtocol(asyncio.Protocol):
    """One peer link's socket after the upgrade (or, dialing, while it waits
    for the upgrade's answer, `upgrade_key` set)."""

    def __init__(self, frame_bytes_max: int, dialer: bool, upgrade_key: str = "") -> None:
        self._parser = WsFrameParser(frame_bytes_max, masked=not dialer)
        self._frame_bytes_max = frame_bytes_max
        self._dialer = dialer
        self._upgrade_key = upgrade_key
        self._head = bytearray()
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: Exception | None = None
        self._frames: deque[Frame] = deque()
        self._frame_waiter: asyncio.Future[None] | None = None
        self._on_frame: Callable[[Frame], None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._lost_callbacks: list[Callable[[Exception | None], None]] = []
        if not upgrade_key:
            self.upgraded.set_result(None)

    # ---------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            if not self.upgraded.done():
                data = self._upgrade(data)
                if not data:
                    return
            for opcode, payload in self._parser.feed(data):
                self._frame(opcode, payload)
        except (FrameError, ConnectionClosed) as error:
            self._fail(error)
        except BaseException as error:  # a bug in dispatch: the serving task raises it
            self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            reason = str(exc) or type(exc).__name__ if exc is not None else "end of stream"
            self.error = ConnectionClosed(reason)
        self._wake()
        if not self.upgraded.done():
            self.upgraded.set_exception(self.error)
        self.resume_writing()  # a write waiting for the buffer to drain fails now
        if not self.closed.done():
            self.closed.set_result(None)
        for callback in self._lost_callbacks:
            callback(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---------------------------------------------------------- frames

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_BINARY:
            frame = decode_frame(payload, self._frame_bytes_max)
            if self._on_frame is not None:
                self._on_frame(frame)
            else:
                self._frames.append(frame)
                self._wake()
        elif opcode == OP_PING:
            self.write([encode_ws_frame(payload, OP_PONG, self._mask_key())])
        elif opcode == OP_CLOSE:
            with contextlib.suppress(ConnectionClosed):
                self.write([encode_ws_frame(CLOSE_NORMAL, OP_CLOSE, self._mask_key())])
            raise ConnectionClosed("WebSocket closed by the peer")
        elif opcode != OP_PONG:
            raise FrameError("text WebSocket message")

    def deliver_to(self, on_frame: Callable[[Frame], None]) -> None:
        """From now on, call `on_frame` with each frame as it is decoded (those
        decoded before first, in order)."""
        while self._frames:
            on_frame(self._frames.popleft())
        self._on_frame = on_frame

    async def next_frame(self) -> Frame:
        while not self._frames:
            if self.error is not None:
                raise self.error
            self._frame_waiter = asyncio.get_running_loop().create_future()
            await self._frame_waiter
        return self._frames.popleft()

    def _wake(self) -> None:
        waiter, self._frame_waiter = self._frame_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self.error = error if isinstance(error, Exception) else ConnectionClosed(repr(error))
        self._wake()
        if not self.upgraded.done():
            self.upgraded.set_exception(self.error)
        if self.transport is not None:
            self.transport.abort()

    # ---------------------------------------------------------- writing

    def _mask_key(self) -> bytes:
        return os.urandom(4) if self._dialer else b""

    def write_bodies(self, bodies: Sequence[bytes]) -> None:
        mask = self._mask_key
        self.write([encode_ws_frame(body, OP_BINARY, mask()) for body in bodies])

    def write(self, frames: list[bytes]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionClosed(str(self.error) if self.error else "the link is closing")
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    async def drain(self) -> None:
        if not self._paused:
            return
        if self.transport is None or self.transport.is_closing():
            raise ConnectionClosed("the link is closing")
        if self._drain_waiter is None:  # shared by every writer waiting
            self._drain_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drain_waiter)
        if self.error is not None:
            raise ConnectionClosed(str(self.error))

    def on_lost(self, callback: Callable[[Exception | None], None]) -> None:
        self._lost_callbacks.append(callback)

    # ---------------------------------------------------------- dialing

    def _upgrade(self, data: bytes) -> bytes:
        """Take the upgrade's answer from the front of the stream; what follows it."""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _RESPONSE_HEAD_BYTES_MAX:
                raise ConnectionClosed("the upgrade's answer has no end")
            return b""
        head, rest = bytes(self._head[:end]), bytes(self._head[end + 4 :])
        self._head = bytearray()
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "101":
            raise ConnectionClosed(f"no WebSocket upgrade: {status_line!r}")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept") != accept_key(self._upgrade_key):
            raise ConnectionClosed("the upgrade's answer has a wrong Sec-WebSocket-Accept")
        self.upgraded.set_result(None)
        return rest


class WsLinkStream(FrameStream):
    def __init__(self, protocol: WsLinkProtocol, remote_address: str) -> None:
        self._protocol = protocol
        self.remote_address = remote_address

    async def read_frame(self) -> Frame:
        return await self._protocol.next_frame()

    async def serve_frames(self, on_frame: Callable[[Frame], None]) -> None:
        protocol = self._protocol
        protocol.deliver_to(on_frame)
        await protocol.closed
        assert protocol.error is not None
        raise protocol.error

    async def write_bodies(self, bodies: Sequence[bytes]) -> None:
        protocol = self._protocol
        protocol.write_bodies(bodies)
        await protocol.drain()

    async def close(self) -> None:
        protocol = self._protocol
        transport = protocol.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(ConnectionClosed):
            protocol.write([encode_ws_frame(CLOSE_NORMAL, OP_CLOSE, protocol._mask_key())])
        transport.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await asyncio.shield(protocol.closed)
        if not protocol.closed.done():
            transport.abort()


def adopt(transport: asyncio.Transport, frame_bytes_max: int, remote_address: str) -> WsLinkStream:
    """Take an upgraded socket from aiohttp (the accepting side): frames from now on
    are ours. aiohttp's protocol still learns when the connection is lost."""
    previous = transport.get_protocol()
    protocol = WsLinkProtocol(frame_bytes_max, dialer=False)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    protocol.on_lost(previous.connection_lost)
    return WsLinkStream(protocol, remote_address)


class WebSocketDialer(Dialer):
    """Dials `path` on a peer's API port (https when `ssl_context` is given)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, path: str = CLUSTER_PATH):
        self._ssl_context = ssl_context
        self._path = path

    async def connect(self, address: str, frame_bytes_max: int) -> FrameStream:
        host, port = split_address(address)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        loop = asyncio.get_running_loop()
        extra: dict[str, Any] = {}
        if self._ssl_context is not None:
            extra = {"ssl": self._ssl_context, "server_hostname": host}
        try:
            transport, protocol = await loop.create_connection(
                lambda: WsLinkProtocol(frame_bytes_max, dialer=True, upgrade_key=key),
                host,
                port,
                **extra,
            )
        except (OSError, ssl.SSLError) as error:
            raise ConnectionClosed(str(error) or type(error).__name__) from None
        host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        request = (
            f"GET {self._path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        stream = WsLinkStream(protocol, address)
        try:
            transport.write(request.encode("ascii"))
            await protocol.upgraded
        except BaseException:
            transport.abort()
            raise
        return stream

    async def close(self) -> None:
        pass  # nothing is shared between connections
