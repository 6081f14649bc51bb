"""`python -m bench.http_layer`: what the HTTP layer costs a write, three ways.

Starts changeagent as the bench does (1 or 3 members), each member through this
module's `serve` entry, which adds two ports to the API's own (where the front door,
api/front_door.py, answers plain writes): `aiohttp`, a plain aiohttp site of the
same application (every write through aiohttp's request machinery, as before the
front door), and `bare`, POST /changes through a bare `asyncio.Protocol` parsing
with httptools: the body goes to the same `Node.append_change` and the answer is
written from the same `on_applied` step as the API's `WriteDelivery`, with no check,
metric or limit, handled in the call that reads it. wrk posts the bench's payload to
the leader's three ports in turn (same process, same log), and this prints the
writes/s and p50 of each, and the ratios door/aiohttp and bare/door.

    python -m bench.http_layer                          # 1 member, 1 and 16 clients
    python -m bench.http_layer --members 3 --clients 1,16,64 --rounds 3

The bare path is a measurement, not a server: it answers nothing but a well-formed
POST /changes, and has no authentication, metrics, limits or shutdown drain. What it
showed is in docs/BENCHMARKS.md, "Issue 15: a quiet hour, a full run".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, cast

import httptools
from aiohttp import web

from bench import procs
from bench.procs import LOOPBACK, PROCESSES
from bench.systems.changeagent import ChangeAgent
from bench.wrk import run_wrk
from changeagent import server as server_module
from changeagent.api.wire import json_200
from changeagent.change import parse_change_body
from changeagent.cli.main import main as changeagent_main
from changeagent.eager import start_now

PORT_FILE = "bare-http-port"  # in the member's data directory: "<bare port> <aiohttp port>"
PORT_WAIT_S = 30.0
_ERROR = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


# ------------------------------------------------------------------ inside a member


class BareWrites(asyncio.Protocol):
    """POST /changes over keep-alive HTTP/1.1, one request after another per
    connection, each written in the call that completes its bytes."""

    def __init__(self, node: Any) -> None:
        self._node = node
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._body: list[bytes] = []
        self._pending: deque[bytes] = deque()
        self._busy = False
        self._writing: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._pending.append(b"".join(self._body))
        self._body = []
        self._next()

    def _next(self) -> None:
        while self._pending and not self._busy:
            self._busy = True
            task = start_now(self._write(self._pending.popleft()))
            if task is not None:
                self._writing.add(task)
                task.add_done_callback(self._writing.discard)

    async def _write(self, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        answered = False

        def deliver(entry: Any) -> None:
            nonlocal answered
            transport.write(json_200(entry.data))
            answered = True

        try:
            stored = await self._node.append_change(parse_change_body(body), "", deliver)
            if not answered:
                transport.write(json_200(stored))
        except Exception as error:  # a measurement: say what went wrong, keep going
            text = repr(error).encode()
            transport.write(_ERROR % (len(text), text))
        self._busy = False
        if self._pending:
            asyncio.get_running_loop().call_soon(self._next)


def serve(argv: list[str]) -> int:
    """A member: changeagent's own main, plus the bare listener and a plain aiohttp
    site on free ports of the same host, written to `PORT_FILE` in its data directory."""
    data_dir = Path(argv[argv.index("-d") + 1])
    host = argv[argv.index("--host") + 1] if "--host" in argv else LOOPBACK
    start_listener = server_module.start_listener

    async def with_bare_listener(node: Any, *args: Any, **kwargs: Any) -> Any:
        listeners = await start_listener(node, *args, **kwargs)
        loop = asyncio.get_running_loop()
        bare = await loop.create_server(lambda: BareWrites(node), host, 0, backlog=1024)
        port = bare.sockets[0].getsockname()[1]
        site = web.TCPSite(listeners.runner, host, 0, backlog=1024)
        await site.start()
        (data_dir / PORT_FILE).write_text(f"{port} {site.port}")
        return listeners

    server_module.start_listener = with_bare_listener  # type: ignore[assignment]
    return int(changeagent_main(argv) or 0)


# ------------------------------------------------------------------ the driver


def _extra_ports(data_dir: Path) -> tuple[int, int]:
    """(bare, aiohttp) ports of the member with `data_dir`."""
    deadline = time.monotonic() + PORT_WAIT_S
    path = data_dir / PORT_FILE
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} was not written within {PORT_WAIT_S:.0f} s")
        time.sleep(0.05)
    bare, aiohttp = path.read_text().split()
    return int(bare), int(aiohttp)


def measure(members: int, clients: list[int], rounds: int, seconds: float) -> list[str]:
    """wrk against the leader's API port and its bare port in turn; a line a level."""
    os.environ["CHANGEAGENT_CMD"] = f"{sys.executable} -m bench.http_layer serve"
    procs.members_import_this_tree()
    system = ChangeAgent(PROCESSES, members)
    system.start()
    try:
        leader = system.leader_index()
        member = system.members[leader]
        bare, aiohttp = _extra_ports(member.data_dir)
        ports = {"aiohttp": aiohttp, "door": member.port, "bare": bare}
        lines = []
        for level in clients:
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in ports}
            for port in ports.values():
                run_wrk(f"http://{LOOPBACK}:{port}/changes", "changeagent_post.lua", level,
                        2, "warm")
            for _ in range(rounds):  # alternating, so that the machine's drift is shared
                for name, port in ports.items():
                    out = run_wrk(f"http://{LOOPBACK}:{port}/changes", "changeagent_post.lua",
                                  level, seconds, name)
                    if out["errors"]:
                        raise RuntimeError(f"{name}: {out['errors']} errors at {level} clients")
                    results[name].append(out)
            lines.append(_line(members, level, results))
        return lines
    finally:
        system.stop()


def _line(members: int, level: int, results: dict[str, list[dict[str, Any]]]) -> str:
    rates = {name: [out["throughput"] for out in runs] for name, runs in results.items()}
    p50s = {name: [out["percentiles_us"]["50"] / 1e3 for out in runs]
            for name, runs in results.items()}
    cells = [
        f"{name} {statistics.median(rates[name]):,.0f} writes/s "
        f"({min(rates[name]):,.0f}-{max(rates[name]):,.0f}), "
        f"p50 {statistics.median(p50s[name]):.3f} ms"
        for name in results
    ]
    rate = {name: statistics.median(values) for name, values in rates.items()}
    return (f"{members} member(s), {level} client(s): " + "; ".join(cells)
            + f"; door/aiohttp {rate['door'] / rate['aiohttp']:.2f}x"
            + f"; bare/door {rate['bare'] / rate['door']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        return serve(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, choices=(1, 3), default=1)
    parser.add_argument("--clients", default="1,16", help="comma-separated wrk connections")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    arguments = parser.parse_args(argv)
    procs.install_cleanup_hooks()
    try:
        clients = [int(level) for level in arguments.clients.split(",")]
        for line in measure(arguments.members, clients, arguments.rounds, arguments.seconds):
            print(line, flush=True)
    finally:
        PROCESSES.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
