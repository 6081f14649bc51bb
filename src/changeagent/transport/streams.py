"""Carriers: how frame bodies travel. Both look the same to the transport.

- TCP (the cluster port `-cp`, optionally TLS): a byte stream of
  length-prefixed bodies, parsed by `FrameDecoder` (`tcplink`).
- WebSocket (the API port, under `CLUSTER_PATH`): one binary message per body
  (`wslink`: the socket is ours after the HTTP upgrade).

Both read and write through a `link_protocol.LinkProtocol`.

A `FrameStream` is one open connection; a `Dialer` opens outbound ones.
End of stream and socket errors surface as `ConnectionClosed`; bad input as
`FrameError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from changeagent.transport.codec import encode_frame
from changeagent.transport.frames import Frame

CLUSTER_PATH = "/_cluster/v1/stream"


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

    @abstractmethod
    async def serve_frames(self, on_frame: Callable[[Frame], None]) -> None:
        """Call `on_frame` with every further frame, from the read callback that
        decoded it, until reading fails; raises what `read_frame` raises."""

    @abstractmethod
    async def write_bodies(self, bodies: Sequence[bytes]) -> None:
        """Send encoded frame bodies in order; raises `ConnectionClosed`."""

    @abstractmethod
    async def close(self) -> None:
        """Close; idempotent, never raises."""

    @abstractmethod
    def send_held(self) -> None:
        """Hand the socket at once what the carrier holds back to join with what is
        written later in this loop iteration (`LinkProtocol.write`)."""

    async def write_frames(self, frames: Sequence[Frame]) -> None:
        await self.write_bodies([encode_frame(frame) for frame in frames])


class Dialer(ABC):
    """Opens outbound connections to `host:port` addresses."""

    @abstractmethod
    async def connect(self, address: str, frame_bytes_max: int) -> FrameStream:
        """Raise `ConnectionClosed` (or `OSError`) when the peer cannot be reached."""

    @abstractmethod
    async def close(self) -> None:
        """Release what the dialer holds (sessions); idempotent."""
