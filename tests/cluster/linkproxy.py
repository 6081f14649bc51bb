"""Per-link fault injection between cluster members (loopback only).

One listener per node stands in front of its cluster port (`-cp`), on its own
loopback address (127.0.0.1x) with the same port number, and the node is made
a member by that address. Every peer connection to the node therefore passes
through its listener. The transport keeps one connection per pair of nodes,
dialed by the smaller node id, so a per-node proxy alone cannot tell links
apart (tests/support/faultproxy.py faults a whole listener); this one reads the
dialer's node id from its HELLO frame and applies faults per directed link:

- `block(src, dst)`: drop every byte src sends to dst (one way);
- `isolate(name)`: drop both ways between `name` and every other node;
- `partition(side_a, side_b)`: drop both ways across the two groups;
- `delay(src, dst, ms)`: hold what src sends to dst for `ms` (order kept);
- `heal()`: remove every fault.

Connections of a link are reset when a fault that drops bytes starts or ends,
so no frame is ever cut in half (a real partition stalls TCP; it does not
delete bytes from the middle of a stream): while blocked, new connections
never get past the handshake. The event loop runs in a daemon thread, so
synchronous tests call these methods directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from changeagent.transport.codec import decode_frame
from changeagent.transport.frames import Hello

CHUNK_BYTES = 64 * 1024
PREFIX = struct.Struct(">I")
HELLO_BYTES_MAX = 4096


@dataclass(eq=False)
class _Connection:
    acceptor: str
    dialer: str | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def abort(self) -> None:
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()


class LinkProxy:
    """Listeners for every node; faults keyed by (sender name, receiver name)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []
        self._ids: dict[int, str] = {}
        self._dropped: set[tuple[str, str]] = set()
        self._delay_ms: dict[tuple[str, str], int] = {}
        self._connections: set[_Connection] = set()
        self.connections_accepted = 0

    # ------------------------------------------------------------ setup

    def listen(self, name: str, host: str, port: int, target_port: int) -> str:
        """Accept on host:port for node `name` (listening on 127.0.0.1:target_port)."""
        server = self._run(
            asyncio.start_server(
                lambda reader, writer: self._accept(name, target_port, reader, writer),
                host,
                port,
            )
        )
        self._servers.append(server)
        return f"{host}:{port}"

    def name_node(self, node_id: int, name: str) -> None:
        self._ids[node_id] = name

    def close(self) -> None:
        async def shut() -> None:
            for server in self._servers:
                server.close()
            for connection in list(self._connections):
                connection.abort()

        self._run(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ------------------------------------------------------------ faults

    def block(self, source: str, target: str) -> None:
        self._change(drop={(source, target)})

    def isolate(self, name: str, others: Iterable[str]) -> None:
        self.partition([name], [other for other in others if other != name])

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        a, b = list(side_a), list(side_b)
        self._change(drop={(x, y) for x in a for y in b} | {(y, x) for x in a for y in b})

    def delay(self, source: str, target: str, ms: int) -> None:
        def apply() -> None:
            self._delay_ms[(source, target)] = ms

        self._loop.call_soon_threadsafe(apply)

    def heal(self) -> None:
        def apply() -> None:
            affected = set(self._dropped)
            self._dropped.clear()
            self._delay_ms.clear()
            self._abort_links(affected)

        self._call(apply)

    @property
    def faults(self) -> tuple[set[tuple[str, str]], dict[tuple[str, str], int]]:
        return set(self._dropped), dict(self._delay_ms)

    def _change(self, drop: set[tuple[str, str]]) -> None:
        def apply() -> None:
            new = drop - self._dropped
            self._dropped |= drop
            self._abort_links(new)

        self._call(apply)

    def _abort_links(self, links: set[tuple[str, str]]) -> None:
        touched = {frozenset(link) for link in links}
        for connection in list(self._connections):
            if (
                connection.dialer is None
                or frozenset((connection.dialer, connection.acceptor)) in touched
            ):
                connection.abort()

    # ------------------------------------------------------------ plumbing

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def _call(self, function: Any) -> None:
        async def call() -> None:
            function()

        self._run(call())

    def _dropping(self, source: str | None, target: str | None) -> bool:
        if source is None or target is None:
            # Not identified yet: drop only if the known end is cut off from everyone.
            known = source or target
            names = set(self._ids.values())
            return bool(known) and all(
                (known, other) in self._dropped or (other, known) in self._dropped
                for other in names - {known}
            )
        return (source, target) in self._dropped

    async def _accept(
        self,
        name: str,
        target_port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.connections_accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", target_port
            )
        except OSError:
            writer.transport.abort()
            return
        connection = _Connection(name, writers=[writer, upstream_writer])
        self._connections.add(connection)
        try:
            pumps = [
                asyncio.ensure_future(self._pump_from_dialer(connection, reader, upstream_writer)),
                asyncio.ensure_future(self._pump_to_dialer(connection, upstream_reader, writer)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._connections.discard(connection)
            connection.abort()

    async def _pump_from_dialer(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = bytearray()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            # The dialer's first frame is its HELLO: learn who is dialing.
            while len(head) < PREFIX.size:
                chunk = await reader.read(CHUNK_BYTES)
                if not chunk:
                    return
                head += chunk
            (length,) = PREFIX.unpack_from(head)
            if length <= HELLO_BYTES_MAX:
                while len(head) < PREFIX.size + length:
                    chunk = await reader.read(CHUNK_BYTES)
                    if not chunk:
                        return
                    head += chunk
                with contextlib.suppress(Exception):
                    frame = decode_frame(bytes(head[PREFIX.size : PREFIX.size + length]))
                    if isinstance(frame, Hello):
                        connection.dialer = self._ids.get(frame.node_id)
        await self._forward(
            reader, writer, bytes(head), lambda: (connection.dialer, connection.acceptor)
        )

    async def _pump_to_dialer(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._forward(reader, writer, b"", lambda: (connection.acceptor, connection.dialer))

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
        link: Any,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if self._dropping(*link()):
                    continue
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(release())
        try:
            chunk = first
            while True:
                if chunk and not self._dropping(*link()):
                    source, target = link()
                    delay_s = self._delay_ms.get((source, target), 0) / 1000
                    queue.put_nowait((loop.time() + delay_s, chunk))
                chunk = await reader.read(CHUNK_BYTES)
                if not chunk:
                    break
        except OSError:
            pass
        finally:
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(Exception):
                await sender
