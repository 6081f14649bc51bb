"""The WebSocket carrier: peer links on the API port, framed by `wsframes`.

Dialing (`WebSocketDialer`) sends a fixed upgrade request and checks the 101
answer; accepting (`adopt`) takes the socket from aiohttp after its upgrade,
before the first frame (the dialer says nothing until our CHALLENGE), and tells
aiohttp's protocol when the connection is lost so the server's bookkeeping stays
right. From then on the socket is a `LinkProtocol` (`link_protocol.py`): frames
handed to the transport in `data_received`, a batch in one write.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
from collections.abc import Sequence
from typing import Any

from changeagent.transport.codec import decode_frame
from changeagent.transport.errors import FrameError
from changeagent.transport.link_protocol import LinkProtocol, LinkStream
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


class WsLinkProtocol(LinkProtocol):
    """One peer link's socket after the upgrade (or, dialing, while it waits
    for the upgrade's answer, `upgrade_key` set)."""

    def __init__(self, frame_bytes_max: int, dialer: bool, upgrade_key: str = "") -> None:
        super().__init__()
        self._parser = WsFrameParser(frame_bytes_max, masked=not dialer)
        self._frame_bytes_max = frame_bytes_max
        self._dialer = dialer
        self._upgrade_key = upgrade_key
        self._head = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not upgrade_key:
            self.upgraded.set_result(None)

    def feed(self, data: bytes) -> None:
        if not self.upgraded.done():
            data = self._upgrade(data)
            if not data:
                return
        for opcode, payload in self._parser.feed(data):
            self._frame(opcode, payload)

    def encode(self, bodies: Sequence[bytes]) -> bytes:
        mask = self._mask_key
        return b"".join([encode_ws_frame(body, OP_BINARY, mask()) for body in bodies])

    def goodbye(self) -> bytes:
        return encode_ws_frame(CLOSE_NORMAL, OP_CLOSE, self._mask_key())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._upgrade_failed()

    def fail(self, error: BaseException) -> None:
        super().fail(error)
        self._upgrade_failed()

    def _upgrade_failed(self) -> None:
        if self.upgraded.done():
            return
        assert self.error is not None
        self.upgraded.set_exception(self.error)
        # Marked as seen: a dial that timed out no longer waits for it, and an
        # unseen exception would be logged when the future is collected.
        self.upgraded.exception()

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_BINARY:
            self.deliver(decode_frame(payload, self._frame_bytes_max))
        elif opcode == OP_PING:
            self.write(encode_ws_frame(payload, OP_PONG, self._mask_key()))
        elif opcode == OP_CLOSE:
            with contextlib.suppress(ConnectionClosed):
                self.write(self.goodbye())
            raise ConnectionClosed("WebSocket closed by the peer")
        elif opcode != OP_PONG:
            raise FrameError("text WebSocket message")

    def _mask_key(self) -> bytes:
        return os.urandom(4) if self._dialer else b""

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


def adopt(transport: asyncio.Transport, frame_bytes_max: int, remote_address: str) -> LinkStream:
    """Take an upgraded socket from aiohttp (the accepting side): frames from now on
    are ours. aiohttp's protocol still learns when the connection is lost."""
    previous = transport.get_protocol()
    protocol = WsLinkProtocol(frame_bytes_max, dialer=False)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    protocol.on_lost(previous.connection_lost)
    return LinkStream(protocol, remote_address)


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
        try:
            transport.write(request.encode("ascii"))
            await protocol.upgraded
        except BaseException:
            transport.abort()
            raise
        return LinkStream(protocol, address)

    async def close(self) -> None:
        pass  # nothing is shared between connections
