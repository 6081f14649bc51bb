"""Redis driver: Debian's redis-server, one node, Streams, `appendfsync always`.

`appendonly yes` + `appendfsync always` makes Redis fsync its AOF before answering a
write, the durable setting comparable to changeagent and etcd; RDB snapshots are off.
Writes: `XADD log * d PAYLOAD`; catch-up: `XRANGE log (ID + COUNT 100`; notifications:
`XREAD BLOCK`. Redis is the single-node ceiling; its "join" is a replica's full sync
(`--replicaof`), which is not Raft and is labelled as such.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from typing import Any

from bench.aioclient import RespConnection, RespError, _Incomplete, _parse_resp, resp_connect
from bench.procs import LOOPBACK, BenchError, env_without_proxies, free_port, wait_until
from bench.systems.base import PAGE_SIZE, PAYLOAD, Member, Subscription, System, WriteFailed

STREAM = b"log"
PRELOAD_BATCH = 1000


def redis_command(port: int, *arguments: bytes | str | int, timeout: float = 2.0) -> Any:
    """One command over a short blocking connection (setup and checks, never measured)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(RespConnection.encode(*arguments))
        buffer = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            buffer += chunk
            try:
                value, _ = _parse_resp(buffer, 0)
            except _Incomplete:
                continue
            return value


class StreamRead(Subscription):
    """XREAD BLOCK on one connection, re-issued after every arrival."""

    def __init__(self, connection: RespConnection, cursor: bytes) -> None:
        self.connection = connection
        self.cursor = cursor
        self.value: Any = None

    def arm(self) -> asyncio.Future[Any]:
        raw = RespConnection.encode(b"XREAD", b"COUNT", PAGE_SIZE, b"BLOCK", 60000,
                                    b"STREAMS", STREAM, self.cursor)
        future = self.connection.send(raw)
        future.add_done_callback(self._arrived)
        return future

    def _arrived(self, future: asyncio.Future[Any]) -> None:
        self.arrived_at = self.connection.response_at
        if not future.cancelled() and future.exception() is None:
            self.value = future.result()

    def advance(self) -> int:
        if not self.value:
            return 0
        entries = self.value[0][1]
        if entries:
            self.cursor = entries[-1][0]
        self.value = None
        return len(entries)

    def clone(self, connection: Any) -> Subscription:
        return StreamRead(connection, self.cursor)

    def close(self) -> None:
        self.connection.close()


class Redis(System):
    name = "redis"
    family = "redis"

    def __init__(self, processes: Any, members: int = 1) -> None:
        super().__init__(processes, members)
        self.last_id = b"0-0"
        self.preloaded = 0

    @classmethod
    def missing_reason(cls) -> str | None:
        if shutil.which("redis-server"):
            return None
        return "redis-server is not installed (Debian: redis-server)"

    def _argv(self, member: Member, replica_of: int | None = None) -> list[str]:
        argv = ["redis-server", "--port", str(member.port), "--bind", LOOPBACK,
                "--dir", str(member.data_dir), "--appendonly", "yes",
                "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--protected-mode", "yes", "--maxclients", "20000",
                # A replica (join scenario) gets its full sync at once, not after 5 s.
                "--repl-diskless-sync-delay", "0",
                # A primary stopped with its replica waits for it 10 s otherwise.
                "--shutdown-timeout", "0"]
        if replica_of is not None:
            argv += ["--replicaof", LOOPBACK, str(replica_of)]
        return argv

    def _start_member(self, member: Member, replica_of: int | None = None) -> None:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        assert self.base_dir is not None
        member.process = self.processes.start(f"redis-{member.index}",
                                              self._argv(member, replica_of), self.base_dir,
                                              env=env_without_proxies())

        def answers() -> bool:
            try:
                return bool(redis_command(member.port, "PING", timeout=1) == b"PONG")
            except OSError:
                return False

        wait_until(answers, 30, f"redis {member.index} to answer PING", member.process)

    def start(self) -> None:
        if self.member_count != 1:
            raise BenchError("redis runs single-node in this bench")
        self.base_dir = self.processes.make_dir("redis")
        member = Member(index=0, port=free_port(), data_dir=self.base_dir / "r0")
        self.members.append(member)
        self._start_member(member)

    def restart_member(self, index: int) -> None:
        member = self.members[index]
        if member.process is not None:
            self.processes.stop(member.process)
        self._start_member(member)

    # Load

    async def connect(self, member: int | None = None) -> RespConnection:
        return await resp_connect(self.members[member or 0].port)

    async def write(self, connection: RespConnection, sequence: int) -> None:
        try:
            await connection.command(b"XADD", STREAM, b"*", b"d", PAYLOAD)
        except RespError as error:
            raise WriteFailed(f"redis XADD failed: {error}") from error

    async def preload(self, count: int, deadline: float) -> int:
        """Pipelined XADDs in batches of 1000 (setup only; never a measured figure)."""
        connection = await self.connect()
        raw = RespConnection.encode(b"XADD", STREAM, b"*", b"d", PAYLOAD)
        done = 0
        try:
            while done < count and time.monotonic() < deadline:
                batch = min(PRELOAD_BATCH, count - done)
                results = await connection.pipeline([raw] * batch)
                self.last_id = results[-1]
                done += batch
        finally:
            connection.close()
        self.preloaded += done
        return done

    def start_cursor(self) -> Any:
        return b"-"

    async def read_page(self, connection: RespConnection, cursor: Any) -> tuple[int, Any]:
        start = cursor if cursor == b"-" else b"(" + cursor
        entries = await connection.command(b"XRANGE", STREAM, start, b"+", b"COUNT", PAGE_SIZE)
        if entries:
            cursor = entries[-1][0]
        return len(entries), cursor

    async def subscribe(self, connection: RespConnection, from_end: bool = True) -> Subscription:
        last = await connection.command(b"XREVRANGE", STREAM, b"+", b"-", b"COUNT", 1)
        cursor = last[0][0] if last else b"0-0"
        return StreamRead(connection, cursor)

    # Replication stands in for "a new member joins".

    def add_member(self) -> Member:
        assert self.base_dir is not None
        index = len(self.members)
        member = Member(index=index, port=free_port(), data_dir=self.base_dir / f"r{index}")
        member.joined_at = time.perf_counter()
        self._start_member(member, replica_of=self.members[0].port)
        self.members.append(member)
        return member

    def remove_member(self, member: Member) -> None:
        """A replica leaves by stopping: nothing to tell the primary."""
        self._drop(member)

    def waiting_consumers(self, member: int = 0) -> int | None:
        """`blocked_clients` of INFO clients: the XREAD BLOCKs Redis holds."""
        try:
            info = redis_command(self.members[member].port, "INFO", "clients")
        except (OSError, RespError):
            return None
        for line in bytes(info).decode(errors="replace").splitlines():
            if line.startswith("blocked_clients:"):
                return int(line.split(":", 1)[1])
        return None

    def member_has(self, member: Member, last_sequence: int, last_cursor: Any) -> bool:
        try:
            return int(redis_command(member.port, "XLEN", STREAM)) >= last_sequence + 1
        except (OSError, ValueError, TypeError, RespError):
            return False

    def last_cursor(self) -> Any:
        return self.last_id
