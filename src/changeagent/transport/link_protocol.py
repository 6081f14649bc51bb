"""A peer connection as an `asyncio.Protocol`, for both carriers.

Frames are decoded in `data_received` and, once the transport serves the
connection (`FrameStream.serve_frames`), handed to it in that same call: no
stream reader, no task woken per read. Before that (the handshake) they wait in
a queue for `read_frame`. A batch of bodies is written with one
`transport.write`, and so is everything else written to the connection in the
same loop iteration after its first write (`write`). A carrier says how bytes
become frames (`feed`) and bodies become bytes (`encode`): length prefixes on
the cluster port (`tcplink.py`), WebSocket frames on the API port (`wslink.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import cast

from changeagent.transport.frames import Frame
from changeagent.transport.streams import ConnectionClosed, FrameStream

_CLOSE_TIMEOUT_S = 2.0
# `write` holds at most this much for the next iteration; more goes to the socket at
# once, so that a large burst meets the transport's flow control (`drain`) as before.
_HELD_BYTES_MAX = 64 * 1024


class LinkProtocol(asyncio.Protocol):
    """One connection's socket: decoded frames in, encoded bodies out."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.error: Exception | None = None  # why reading stopped, once it has
        self._frames: deque[Frame] = deque()
        self._frame_waiter: asyncio.Future[None] | None = None
        self._on_frame: Callable[[Frame], None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._held: list[bytes] | None = None  # written after this iteration's first write
        self._held_bytes = 0
        self._lost_callbacks: list[Callable[[Exception | None], None]] = []

    # ---------------------------------------------------------- the carrier's part

    @abstractmethod
    def feed(self, data: bytes) -> None:
        """Decode `data`, calling `deliver` with each frame it completes; raise
        `FrameError` or `ConnectionClosed` on what must end the connection."""

    @abstractmethod
    def encode(self, bodies: Sequence[bytes]) -> bytes:
        """The bytes that carry `bodies`, in order."""

    def goodbye(self) -> bytes:
        """Written before closing (a WebSocket's close frame)."""
        return b""

    # ---------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.feed(data)
        except BaseException as error:
            # Bad input, or a bug in the transport's dispatch: the connection is
            # dropped and the serving task raises it (`LinkStream.serve_frames`).
            self.fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            reason = str(exc) or type(exc).__name__ if exc is not None else "end of stream"
            self.error = ConnectionClosed(reason)
        self._held, self._held_bytes = None, 0  # the socket is gone: nothing more goes out
        self._wake()
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

    # ---------------------------------------------------------- frames in

    def deliver(self, frame: Frame) -> None:
        if self._on_frame is not None:
            self._on_frame(frame)
        else:
            self._frames.append(frame)
            self._wake()

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

    def fail(self, error: BaseException) -> None:
        """Stop reading with `error` and drop the connection at once."""
        # A bug in dispatch stays what it is: `serve_frames` raises it.
        self.error = error if isinstance(error, Exception) else ConnectionClosed(repr(error))
        self._wake()
        if self.transport is not None:
            self.write_held()  # what was written before the failure goes, as it did
            self.transport.abort()

    # ---------------------------------------------------------- bytes out

    def write(self, data: bytes) -> None:
        """Write `data` now if it is this loop iteration's first write to the
        connection, else at the start of the next iteration, together with every
        other write held since (one system call, and one wake-up and read of the
        peer, for what many requests or replies produced in one iteration: uvloop
        sends each `transport.write` at once). The first write never waits, so a
        lone request's latency is unchanged; order is kept."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionClosed(str(self.error) if self.error else "the link is closing")
        held = self._held
        if held is None:
            transport.write(data)
            self._held = []
            asyncio.get_running_loop().call_soon(self.write_held)
            return
        held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > _HELD_BYTES_MAX:
            self._write_held_now(transport, held)

    def write_held(self) -> None:
        """Hand what `write` held to the socket now (before closing it, say)."""
        held, self._held, self._held_bytes = self._held, None, 0
        transport = self.transport
        if held and transport is not None and not transport.is_closing():
            self._write_held_now(transport, held)

    def _write_held_now(self, transport: asyncio.Transport, held: list[bytes]) -> None:
        transport.write(b"".join(held) if len(held) > 1 else held[0])
        held.clear()
        self._held_bytes = 0

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


class LinkStream(FrameStream):
    """The transport's view of a `LinkProtocol`."""

    def __init__(self, protocol: LinkProtocol, remote_address: str) -> None:
        self.protocol = protocol
        self.remote_address = remote_address

    async def read_frame(self) -> Frame:
        return await self.protocol.next_frame()

    async def serve_frames(self, on_frame: Callable[[Frame], None]) -> None:
        protocol = self.protocol
        protocol.deliver_to(on_frame)
        await protocol.closed
        assert protocol.error is not None
        raise protocol.error

    async def write_bodies(self, bodies: Sequence[bytes]) -> None:
        protocol = self.protocol
        protocol.write(protocol.encode(bodies))
        await protocol.drain()

    def send_held(self) -> None:
        self.protocol.write_held()

    async def close(self) -> None:
        protocol = self.protocol
        transport = protocol.transport
        if transport is None or transport.is_closing():
            return
        goodbye = protocol.goodbye()
        if goodbye:
            with contextlib.suppress(ConnectionClosed):
                protocol.write(goodbye)
        protocol.write_held()  # `close` sends what the transport holds, not what we do
        transport.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await asyncio.shield(protocol.closed)
        if not protocol.closed.done():
            transport.abort()
