"""`python -m bench.replication_floor`: the leanest replicated write Python can do here.

A 1-client write through 3 members costs, at the least: the client's request read and
parsed on the leader, the entry sent to both followers, a durable append on each
(SQLite WAL, `synchronous=FULL`: one `INSERT` and a `COMMIT` with its fdatasync), an
acknowledgement back, the answer written. This script runs exactly that and nothing
else in three stand-in processes (uvloop, bare `asyncio.Protocol`s, length-prefixed
frames on loopback TCP, no Raft, no JSON, no checks), each writing inline on its
event loop as changeagent does, the leader sending before it writes its own copy and
answering at the first follower's acknowledgement after its own commit. The bench's
asyncio client (`bench.aioclient`) posts the bench's payload one write at a time to
it, to changeagent and to etcd, in turn, and the script prints each one's median
latency and CPU per write.

    python -m bench.replication_floor                      # 3 members, all three systems
    python -m bench.replication_floor --members 1          # one process, no replication
    python -m bench.replication_floor --systems floor --writes 5000
    python -m bench.replication_floor --systems floor,floor+aiohttp,floor+websocket,floor+storage

`floor+LAYER[+LAYER...]` swaps a bare part for the real one: `aiohttp` serves the
client's POST, `websocket` links the members with aiohttp WebSockets (frames started as
changeagent starts them), `storage` appends through changeagent's `Storage`.

No Python server can do a 1-client write faster than the stand-in on the same machine:
if the stand-in is not ahead of etcd, a Python server cannot be (docs/BENCHMARKS.md,
"The floor of a Python write").
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sqlite3
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import aiohttp
from aiohttp import web

from bench import procs
from bench.aioclient import HttpConnection, http_connect
from bench.procs import LOOPBACK, PROCESSES, accepts_connections, free_port, wait_until
from bench.systems import SYSTEMS
from bench.systems.base import PAYLOAD, System
from changeagent.eager import start_now
from changeagent.raft import Entry
from changeagent.server import tune_garbage_collector
from changeagent.storage import Storage, WriteBatch

FRAME = struct.Struct(">IQ")  # body length, index
ACK = struct.Struct(">Q")  # index
HEADER_END = b"\r\n\r\n"
LENGTH_HEADER = b"content-length:"
READY_S = 30.0


def _open_log(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "mmap_size=0"):
        connection.execute(f"PRAGMA {pragma}").fetchall()
    connection.execute("CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, body BLOB)")
    return connection


class AppendLog(Protocol):
    def append(self, index: int, body: bytes) -> None: ...


class _Log:
    """One durable append per entry: what every member must do before it acknowledges."""

    def __init__(self, data_dir: Path) -> None:
        self.connection = _open_log(data_dir / "log.db")

    def append(self, index: int, body: bytes) -> None:
        execute = self.connection.execute
        execute("BEGIN IMMEDIATE")
        execute("INSERT INTO log (idx, body) VALUES (?, ?)", (index, body))
        execute("COMMIT")


class _ChangeagentLog:
    """The same append through changeagent's `Storage`, as its Raft driver writes
    one entry at a time (`Storage.write(batch, now_if_idle=True)`, whose inline
    part is `_write_now`; the writer thread when that declines)."""

    def __init__(self, data_dir: Path) -> None:
        self.storage = Storage.open(data_dir)

    def append(self, index: int, body: bytes) -> None:
        batch = WriteBatch(entries=[Entry(index, 1, 0, body)])
        batch.validate()
        if not self.storage._write_now(batch):
            self.storage.submit(batch, timeout_s=None).result()


class _Buffered(asyncio.Protocol):
    """A stream whose bytes gather in `buffer` until a whole frame or request is in."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]


class _Follower(_Buffered):
    def __init__(self, log: AppendLog) -> None:
        super().__init__()
        self.log = log

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= FRAME.size:
            length, index = FRAME.unpack_from(self.buffer)
            end = FRAME.size + length
            if len(self.buffer) < end:
                return
            body = bytes(self.buffer[FRAME.size:end])
            del self.buffer[:end]
            self.log.append(index, body)
            self.transport.write(ACK.pack(index))  # type: ignore[union-attr]


Answer = Callable[[int], None]


class _Leader:
    def __init__(self, log: AppendLog) -> None:
        self.log = log
        self.index = 0
        self.links: list[Callable[[bytes], None]] = []
        self.waiting: dict[int, Answer] = {}

    def write(self, body: bytes, answer: Answer) -> None:
        self.index += 1
        index = self.index
        frame = FRAME.pack(len(body), index) + body
        for send in self.links:
            send(frame)
        self.log.append(index, body)  # inline, while the followers write theirs
        if self.links:
            self.waiting[index] = answer
        else:
            answer(index)

    def acknowledged(self, index: int) -> None:
        answer = self.waiting.pop(index, None)  # the first follower's: a quorum of 3
        if answer is not None:
            answer(index)


def _answer_body(index: int) -> bytes:
    return b'{"_id":%d}' % index


def _answer_raw(client: asyncio.Transport, index: int) -> None:
    body = _answer_body(index)
    client.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
                 b"\r\n\r\n%s" % (len(body), body))


class _Acks(_Buffered):
    def __init__(self, leader: _Leader) -> None:
        super().__init__()
        self.leader = leader

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= ACK.size:
            (index,) = ACK.unpack_from(self.buffer)
            del self.buffer[:ACK.size]
            self.leader.acknowledged(index)


class _Http(_Buffered):
    """HTTP/1.1 keep-alive POSTs: the head up to its blank line, then Content-Length bytes."""

    def __init__(self, leader: _Leader) -> None:
        super().__init__()
        self.leader = leader

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(HEADER_END)
            if head_end < 0:
                return
            head = bytes(self.buffer[:head_end]).lower()
            at = head.find(LENGTH_HEADER)
            length = 0 if at < 0 else int(head[at + len(LENGTH_HEADER):].split(b"\r\n", 1)[0])
            end = head_end + len(HEADER_END) + length
            if len(self.buffer) < end:
                return
            body = bytes(self.buffer[head_end + len(HEADER_END):end])
            del self.buffer[:end]
            assert self.transport is not None
            self.leader.write(body, functools.partial(_answer_raw, self.transport))


async def _serve(role: str, port: int, data_dir: Path, followers: list[int],
                 layers: frozenset[str]) -> None:
    log: AppendLog = _ChangeagentLog(data_dir) if "storage" in layers else _Log(data_dir)
    tune_garbage_collector()  # as changeagent does once it serves
    if role == "follower":
        if "websocket" in layers:
            await _serve_app(_follower_app(log), port)
        else:
            await _serve_protocol(lambda: _Follower(log), port)
        return
    leader = _Leader(log)
    for follower_port in followers:
        if "websocket" in layers:
            leader.links.append(await _websocket_link(leader, follower_port))
        else:
            leader.links.append(await _raw_link(leader, follower_port))
    if "aiohttp" in layers:
        await _serve_app(_leader_app(leader), port)
    else:
        await _serve_protocol(lambda: _Http(leader), port)


async def _serve_protocol(factory: Callable[[], asyncio.Protocol], port: int) -> None:
    server = await asyncio.get_running_loop().create_server(factory, LOOPBACK, port)
    async with server:
        await server.serve_forever()


async def _serve_app(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, port).start()
    await asyncio.Event().wait()  # until the process is stopped


async def _raw_link(leader: _Leader, port: int) -> Callable[[bytes], None]:
    transport, _ = await asyncio.get_running_loop().create_connection(
        lambda: _Acks(leader), LOOPBACK, port)
    return transport.write


async def _websocket_link(leader: _Leader, port: int) -> Callable[[bytes], None]:
    """A WebSocket from the leader to a follower, written as changeagent writes its
    peer frames (`send_bytes` started in the caller, `eager.start_now`)."""
    socket = await aiohttp.ClientSession().ws_connect(f"http://{LOOPBACK}:{port}/peer")

    async def read_acks() -> None:
        async for message in socket:
            leader.acknowledged(ACK.unpack(message.data)[0])

    LINK_TASKS.append(asyncio.ensure_future(read_acks()))
    return lambda frame: start_now(socket.send_bytes(frame)) and None


def _follower_app(log: AppendLog) -> web.Application:
    async def peer(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            _, index = FRAME.unpack_from(message.data)
            log.append(index, message.data[FRAME.size:])
            await socket.send_bytes(ACK.pack(index))
        return socket

    app = web.Application()
    app.router.add_get("/peer", peer)
    return app


def _leader_app(leader: _Leader) -> web.Application:
    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        leader.write(body, answered.set_result)
        return web.Response(body=_answer_body(await answered), content_type="application/json")

    app = web.Application()
    app.router.add_post("/changes", post)
    return app


LINK_TASKS: list[asyncio.Future[None]] = []
# What can replace the stand-in's bare parts, one at a time: "floor+aiohttp" serves the
# client with aiohttp, "+websocket" links the members by aiohttp WebSockets, "+storage"
# appends through changeagent's Storage.
LAYERS = frozenset({"aiohttp", "websocket", "storage"})


def _layers(name: str) -> frozenset[str]:
    return frozenset(name.split("+")[1:])


class Floor:
    """The stand-in, started and stopped as the bench's systems are."""

    def __init__(self, members: int, layers: frozenset[str] = frozenset()) -> None:
        self.members = members
        self.layers = layers
        self.root = PROCESSES.make_dir("floor")
        self.port = 0
        self.started: list[procs.Started] = []

    def start(self) -> None:
        follower_ports = [free_port() for _ in range(self.members - 1)]
        for number, port in enumerate(follower_ports):
            self._spawn("follower", port, f"follower{number}", [])
        for port in follower_ports:
            wait_until(lambda port=port: accepts_connections(port), READY_S, f"follower on {port}")
        self.port = free_port()
        self._spawn("leader", self.port, "leader", follower_ports)
        wait_until(lambda: accepts_connections(self.port), READY_S, "the stand-in leader")

    def _spawn(self, role: str, port: int, name: str, followers: list[int]) -> None:
        data_dir = self.root / name
        data_dir.mkdir()
        command = [sys.executable, "-m", "bench.replication_floor", "--serve", role,
                   "--port", str(port), "--data-dir", str(data_dir),
                   "--followers", ",".join(map(str, followers)),
                   "--layers", ",".join(sorted(self.layers))]
        self.started.append(PROCESSES.start(f"floor-{name}", command, self.root))

    def pids(self) -> list[int]:
        return [started.pid for started in self.started]

    def leader_index(self) -> int:
        return len(self.started) - 1  # the followers start first

    async def connect(self, member: int | None = None) -> HttpConnection:
        return await http_connect(self.port)

    async def write(self, connection: HttpConnection, sequence: int) -> None:
        """One write; the stand-in numbers them from 1, so the answer names `sequence + 1`."""
        status, body = await connection.request("POST", "/changes", b'{"data":' + PAYLOAD + b"}")
        if status != 200 or body != _answer_body(sequence + 1):
            raise RuntimeError(f"the stand-in answered {status} {body[:100]!r} to write {sequence}")

    def stop(self) -> None:
        for started in self.started:
            PROCESSES.stop(started)
        self.started = []


async def _write(system: object, count: int, first: int) -> list[float]:
    connection = await system.connect(None)  # type: ignore[attr-defined]
    latencies = []
    for sequence in range(first, first + count):
        started = time.perf_counter()
        await system.write(connection, sequence)  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - started)
    connection.close()
    return latencies


def _measure(name: str, members: int, writes: int, warmup: int) -> str:
    if name.startswith("floor"):
        system: Floor | System = Floor(members, _layers(name))
    else:
        system = SYSTEMS[name](PROCESSES, members)
    system.start()
    try:
        asyncio.run(_write(system, warmup, 0))
        pids = system.pids()
        leader = system.leader_index() if members > 1 else 0
        pids.insert(0, pids.pop(leader))
        before = [procs.cpu_seconds([pid]) for pid in pids]
        latencies = asyncio.run(_write(system, writes, warmup))
        after = [procs.cpu_seconds([pid]) for pid in pids]
    finally:
        system.stop()
    per_write_us = [(a - b) * 1e6 / writes for a, b in zip(after, before, strict=True)]
    each = " + ".join(f"{us:.0f}" for us in per_write_us)
    return (f"{name}: p50 {statistics.median(latencies) * 1000:.3f} ms, "
            f"{writes / sum(latencies):,.0f} writes/s, "
            f"CPU per write {sum(per_write_us):.0f} us ({each}; the leader first)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replication_floor",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="floor,changeagent,etcd")
    parser.add_argument("--members", type=int, choices=(1, 3), default=3)
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", choices=("leader", "follower"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--followers", default="", help=argparse.SUPPRESS)
    parser.add_argument("--layers", default="", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.serve:
        import uvloop

        followers = [int(port) for port in arguments.followers.split(",") if port]
        layers = frozenset(layer for layer in arguments.layers.split(",") if layer)
        uvloop.run(_serve(arguments.serve, arguments.port, arguments.data_dir, followers, layers))
        return 0
    names = [name for name in arguments.systems.split(",") if name]
    unknown = [name for name in names
               if not (name in SYSTEMS or (name.startswith("floor") and _layers(name) <= LAYERS))]
    if unknown:
        print(f"unknown systems: {', '.join(unknown)}", file=sys.stderr)
        return 2
    procs.measure_in_turn(
        names, arguments.rounds,
        lambda name: None if name.startswith("floor") else SYSTEMS[name].missing_reason(),
        lambda name: _measure(name, arguments.members, arguments.writes, arguments.warmup))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
