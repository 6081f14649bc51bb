"""The TCP carrier: peer links on the cluster port (`-cp`), optionally TLS.

The stream is length-prefixed frame bodies (`codec.FrameDecoder`), read and
written by a `LinkProtocol` (`link_protocol.py`): frames handed to the
transport in `data_received`, a batch in one write.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence

from changeagent.transport.codec import PREFIX, FrameDecoder
from changeagent.transport.link_protocol import LinkProtocol, LinkStream
from changeagent.transport.streams import ConnectionClosed, Dialer, FrameStream, split_address


class TcpLinkProtocol(LinkProtocol):
    def __init__(
        self, frame_bytes_max: int, on_connected: Callable[[LinkStream], object] | None = None
    ) -> None:
        super().__init__()
        self._decoder = FrameDecoder(frame_bytes_max)
        self._on_connected = on_connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._on_connected is not None:
            self._on_connected(LinkStream(self, remote_address(transport)))

    def feed(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            self.deliver(frame)

    def encode(self, bodies: Sequence[bytes]) -> bytes:
        chunks: list[bytes] = []
        for body in bodies:
            chunks += (PREFIX.pack(len(body)), body)
        return b"".join(chunks)


def remote_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


async def serve(
    on_stream: Callable[[LinkStream], object],
    host: str,
    port: int,
    frame_bytes_max: int,
    ssl_context: ssl.SSLContext | None,
    handshake_timeout_s: float,
) -> asyncio.Server:
    """Listen on the cluster port; `on_stream` is called with each connection."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: TcpLinkProtocol(frame_bytes_max, on_stream),
        host,
        port,
        ssl=ssl_context,
        ssl_handshake_timeout=handshake_timeout_s if ssl_context else None,
    )


class TcpDialer(Dialer):
    """Dials the cluster port; with `ssl_context` (client side) speaks TLS.

    For mutual TLS give a context that holds our certificate and key and trusts
    only the cluster CA (`ssl.create_default_context(cafile=...)` then
    `load_cert_chain(...)`).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context

    async def connect(self, address: str, frame_bytes_max: int) -> FrameStream:
        host, port = split_address(address)
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_connection(
                lambda: TcpLinkProtocol(frame_bytes_max), host, port, ssl=self._ssl_context
            )
        except (OSError, ssl.SSLError) as error:
            raise ConnectionClosed(str(error) or type(error).__name__) from None
        return LinkStream(protocol, remote_address(transport))

    async def close(self) -> None:
        pass  # nothing is shared between TCP connections
