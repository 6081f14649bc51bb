"""A fault-injecting TCP proxy for peer links in cluster tests.

Put one in front of each node's peer port and point the other nodes at it.
Faults, changeable at any time:

- `pass_through()`: forward everything (the default);
- `partition()`: drop every byte both ways (connections stay open, as when a
  network silently loses packets);
- `block("client_to_server")` / `block("server_to_client")`: drop one direction
  only (an asymmetric partition);
- `delay(ms)`: hold every chunk for `ms` milliseconds, order kept;
- `cut()`: reset every open connection (new ones are still accepted).

In-process: `proxy = await FaultProxy(listen, target).start()`, then call the
methods. As a subprocess:

    python -m tests.support.faultproxy --listen 127.0.0.1:A --target 127.0.0.1:B \
        [--control 127.0.0.1:C]

prints `faultproxy listening on PORT control on PORT` and takes one command per
line on the control port (`pass`, `partition`, `block client_to_server`,
`block server_to_client`, `delay 100`, `cut`, `status`), answering `ok ...` or
`error ...`. `FaultProxyProcess` drives that from synchronous test code. Only
loopback addresses are accepted: this tool must never touch a real network.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import re
import socket
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

CHUNK_BYTES = 64 * 1024
DIRECTIONS = ("client_to_server", "server_to_client")


def loopback(address: str) -> tuple[str, int]:
    """Parse `host:port`; refuse any host that is not a loopback address."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"faultproxy only works on loopback host:port addresses, not {address!r}")
    return host, int(port)


@dataclass
class Faults:
    drop: dict[str, bool]
    delay_ms: int = 0

    def describe(self) -> str:
        dropped = [d for d in DIRECTIONS if self.drop[d]] or ["none"]
        return f"drop={','.join(dropped)} delay_ms={self.delay_ms}"


class FaultProxy:
    def __init__(self, listen: str, target: str) -> None:
        self._listen = loopback(listen)
        self._target = loopback(target)
        self.faults = Faults(drop=dict.fromkeys(DIRECTIONS, False))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections_accepted = 0
        self.bytes_forwarded = dict.fromkeys(DIRECTIONS, 0)
        self.bytes_dropped = dict.fromkeys(DIRECTIONS, 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        return f"{self._listen[0]}:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, *self._listen)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -------------------------------------------------------------- faults

    def pass_through(self) -> None:
        self.faults = Faults(drop=dict.fromkeys(DIRECTIONS, False))

    def partition(self) -> None:
        self.faults.drop = dict.fromkeys(DIRECTIONS, True)

    def block(self, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}")
        self.faults.drop[direction] = True

    def delay(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("delay must be >= 0 ms")
        self.faults.delay_ms = ms

    def cut(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                transport = writer.transport
                if isinstance(transport, asyncio.Transport):
                    transport.abort()  # a reset, not a polite close
        self._writers.clear()

    # -------------------------------------------------------------- forwarding

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections_accepted += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))
        pumps = [
            self._spawn(self._pump(client_reader, server_writer, "client_to_server")),
            self._spawn(self._pump(server_reader, client_writer, "server_to_client")),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
        for pump in pumps:
            pump.cancel()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        # Chunks wait in a queue stamped with their release time, so a delay adds
        # latency without cutting throughput, and order is kept.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = self._spawn(self._release(queue, writer, direction))
        loop = asyncio.get_running_loop()
        try:
            while chunk := await reader.read(CHUNK_BYTES):
                if self.faults.drop[direction]:
                    self.bytes_dropped[direction] += len(chunk)
                    continue
                queue.put_nowait((loop.time() + self.faults.delay_ms / 1000, chunk))
        except OSError:
            pass
        finally:
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(Exception):
                await sender

    async def _release(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await queue.get()
            if not chunk:
                return
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if self.faults.drop[direction]:
                self.bytes_dropped[direction] += len(chunk)  # blocked while it waited
                continue
            writer.write(chunk)
            self.bytes_forwarded[direction] += len(chunk)
            await writer.drain()

    # -------------------------------------------------------------- control

    def command(self, line: str) -> str:
        """Apply one control-port command; the answer line (without newline)."""
        words = line.split()
        try:
            match words:
                case ["pass"]:
                    self.pass_through()
                case ["partition"]:
                    self.partition()
                case ["block", direction]:
                    self.block(direction)
                case ["delay", ms] if re.fullmatch(r"\d{1,7}", ms):
                    self.delay(int(ms))
                case ["cut"]:
                    self.cut()
                case ["status"]:
                    pass
                case _:
                    return f"error unknown command {line.strip()!r}"
        except ValueError as error:
            return f"error {error}"
        return f"ok {self.faults.describe()} connections={len(self._writers) // 2}"

    async def serve_control(self, address: str) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while line := await reader.readline():
                    writer.write((self.command(line.decode(errors="replace")) + "\n").encode())
                    await writer.drain()
            writer.close()

        return await asyncio.start_server(handle, *loopback(address))


class FaultProxyProcess:
    """Runs the proxy as a subprocess and sends it commands (synchronous)."""

    def __init__(self, target: str, listen: str = "127.0.0.1:0", timeout_s: float = 10.0):
        loopback(target)
        loopback(listen)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.faultproxy", "--listen", listen,
             "--target", target, "--control", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # the child prints this before serving
        found = re.search(r"listening on (\d+) control on (\d+)", line)
        if found is None:
            self.process.kill()
            raise RuntimeError(f"faultproxy did not start: {line!r}")
        self.port, self.control_port = int(found[1]), int(found[2])
        self._control = socket.create_connection(("127.0.0.1", self.control_port), timeout_s)
        self._answers = self._control.makefile("r")

    def command(self, line: str) -> str:
        self._control.sendall(line.encode() + b"\n")
        return self._answers.readline().strip()

    def stop(self) -> None:
        self._answers.close()
        self._control.close()
        self.process.kill()
        self.process.wait(10)


async def _main(arguments: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="loopback host:port to accept on")
    parser.add_argument("--target", required=True, help="loopback host:port to forward to")
    parser.add_argument("--control", default="127.0.0.1:0", help="loopback control host:port")
    options = parser.parse_args(arguments)
    try:
        proxy = await FaultProxy(options.listen, options.target).start()
        control = await proxy.serve_control(options.control)
    except ValueError as error:
        parser.error(str(error))
    print(
        f"faultproxy listening on {proxy.port} control on {control.sockets[0].getsockname()[1]}",
        flush=True,
    )
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(sys.argv[1:]))
