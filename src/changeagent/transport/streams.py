"""Carriers: how frame bodies travel. Both look the same to the transport.

- TCP (the cluster port `-cp`, optionally TLS): a byte stream of
  length-prefixed bodies, parsed by `FrameDecoder`.
- WebSocket (the API port, under `CLUSTER_PATH`): one binary message per body
  (`wslink`: the socket is ours after the HTTP upgrade).

A `FrameStream` is one open connection; a `Dialer` opens outbound ones.
End of stream and socket errors surface as `ConnectionClosed`; bad input as
`FrameError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence

from changeagent.transport.codec import PREFIX, FrameDecoder, encode_frame
from changeagent.transport.frames import Frame

CLUSTER_PATH = "/_cluster/v1/stream"
_READ_CHUNK_BYTES = 256 * 1024
_CLOSE_TIMEOUT_S = 2.0


class ConnectionClosed(ConnectionError):
    """The other side went away (end of stream, reset, or a closed WebSocket)."""


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` to (host, port); raise `ValueError` if malformed."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


class FrameStream(ABC):
    """One open connection carrying frames."""

    remote_address: str = ""

    @abstractmethod
    async def read_frame(self) -> Frame:
        """The next frame; raises `FrameError` or `ConnectionClosed`."""

    async def serve_frames(self, on_frame: Callable[[Frame], None]) -> None:
        """Call `on_frame` with every frame until reading fails; raises what
        `read_frame` raises. A carrier may call it from its read callback, in
        the same step that decoded the frame."""
        while True:
            on_frame(await self.read_frame())

    @abstractmethod
    async def write_bodies(self, bodies: Sequence[bytes]) -> None:
        """Send encoded frame bodies in order; raises `ConnectionClosed`."""

    @abstractmethod
    async def close(self) -> None:
        """Close; idempotent, never raises."""

    async def write_frames(self, frames: Sequence[Frame]) -> None:
        await self.write_bodies([encode_frame(frame) for frame in frames])


class TcpFrameStream(FrameStream):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frame_bytes_max: int
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(frame_bytes_max)
        self._ready: deque[Frame] = deque()
        peer = writer.get_extra_info("peername")
        self.remote_address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def read_frame(self) -> Frame:
        while not self._ready:
            try:
                data = await self._reader.read(_READ_CHUNK_BYTES)
            except (OSError, ssl.SSLError) as error:
                raise ConnectionClosed(str(error) or type(error).__name__) from None
            if not data:
                raise ConnectionClosed("end of stream")
            self._ready.extend(self._decoder.feed(data))
        return self._ready.popleft()

    async def write_bodies(self, bodies: Sequence[bytes]) -> None:
        chunks: list[bytes] = []
        for body in bodies:
            chunks += (PREFIX.pack(len(body)), body)
        try:
            self._writer.writelines(chunks)
            await self._writer.drain()
        except (OSError, RuntimeError, ssl.SSLError) as error:
            raise ConnectionClosed(str(error) or type(error).__name__) from None

    async def close(self) -> None:
        if self._writer.is_closing():
            return
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._writer.wait_closed()


class Dialer(ABC):
    """Opens outbound connections to `host:port` addresses."""

    @abstractmethod
    async def connect(self, address: str, frame_bytes_max: int) -> FrameStream:
        """Raise `ConnectionClosed` (or `OSError`) when the peer cannot be reached."""

    @abstractmethod
    async def close(self) -> None:
        """Release what the dialer holds (sessions); idempotent."""


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
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=self._ssl_context, limit=_READ_CHUNK_BYTES
            )
        except (OSError, ssl.SSLError) as error:
            raise ConnectionClosed(str(error) or type(error).__name__) from None
        return TcpFrameStream(reader, writer, frame_bytes_max)

    async def close(self) -> None:
        pass  # nothing is shared between TCP connections
