"""changeagent driver: `changeagent -p PORT -d DIR` per member, HTTP API on loopback.

Writes are `POST /changes` with `{"data": PAYLOAD}`; reads are `GET /changes?since=N&limit=100`;
consumers long-poll with `block`. A 3-member cluster is formed as in the README's
walkthrough: every member is started on its own fixed loopback port (a restarted node is
found again by its stored address), then each member's address is POSTed to
`/cluster/members` on the first node, the first node's own address first; each POST
answers once that node is a voter. A 4th member (join scenario) is POSTed to the leader
the same way. The leader is found with `/diagnostics/raft/state`, terms are read from
`/diagnostics/raft`. The cluster members get `electionTimeout: 1s` and
`heartbeatTimeout: 100ms`, the same timeouts etcd runs with by default, so failover
times are comparable.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from bench.aioclient import HttpConnection, http_connect
from bench.procs import (
    LOOPBACK,
    BenchError,
    env_without_proxies,
    free_port,
    http_status,
    wait_until,
)
from bench.systems.base import (
    PAGE_SIZE,
    PAYLOAD,
    Member,
    Subscription,
    System,
    WriteFailed,
    concurrent_writes,
)
from bench.wrk import run_wrk_preload, wrk_available

CLUSTER_CONFIG = "electionTimeout: 1s\nheartbeatTimeout: 100ms\n"
START_TIMEOUT_SECONDS = 30.0
# POST /cluster/members answers once the new node is a voter, i.e. after it has caught up.
ADD_MEMBER_TIMEOUT_SECONDS = 600.0
REMOVE_MEMBER_TIMEOUT_SECONDS = 30.0
PRELOAD_CONNECTIONS = 256


def changeagent_command() -> list[str]:
    """The command that starts a node: $CHANGEAGENT_CMD, the venv's script, or PATH."""
    override = os.environ.get("CHANGEAGENT_CMD")
    if override:
        return override.split()
    beside_python = Path(sys.executable).parent / "changeagent"
    if beside_python.exists():
        return [str(beside_python)]
    found = shutil.which("changeagent")
    return [found] if found else ["changeagent"]


# Loopback only: never route the bench's own requests through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(port: int, path: str, timeout: float = 2.0, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(f"http://{LOOPBACK}:{port}{path}", data=data)
    with _OPENER.open(request, timeout=timeout) as response:
        return bytes(response.read())


class LongPoll(Subscription):
    """GET /changes?since=N&block=S on one keep-alive connection."""

    def __init__(self, connection: HttpConnection, cursor: int, block_seconds: float) -> None:
        self.connection = connection
        self.cursor = cursor
        self.block_seconds = block_seconds
        self.body = b""
        self.future: asyncio.Future[Any] | None = None

    def arm(self) -> asyncio.Future[Any]:
        path = f"/changes?since={self.cursor}&limit={PAGE_SIZE}&block={self.block_seconds:g}"
        self.future = self.connection.send(self.connection.build("GET", path))
        self.future.add_done_callback(self._arrived)
        return self.future

    def _arrived(self, future: asyncio.Future[Any]) -> None:
        self.arrived_at = self.connection.response_at
        if not future.cancelled() and future.exception() is None:
            self.body = future.result()[1]

    def advance(self) -> int:
        changes = orjson.loads(self.body)["changes"] if self.body else []
        if changes:
            self.cursor = int(changes[-1]["_id"])
        return len(changes)

    def clone(self, connection: Any) -> Subscription:
        return LongPoll(connection, self.cursor, self.block_seconds)

    def close(self) -> None:
        self.connection.close()


class ChangeAgent(System):
    name = "changeagent"
    family = "changeagent"
    help_text = ""
    # None: `changeagent_command()`; set for another tree of changeagent (`variant`).
    command: list[str] | None = None

    @classmethod
    def node_command(cls) -> list[str]:
        return cls.command or changeagent_command()

    def __init__(self, processes: Any, members: int = 1) -> None:
        super().__init__(processes, members)
        self.last_id = 0
        self.post_raw_cache: dict[int, bytes] = {}

    @classmethod
    def missing_reason(cls) -> str | None:
        command = cls.node_command()
        try:
            result = subprocess.run([*command, "--help"], capture_output=True, timeout=30,
                                    env=env_without_proxies())
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"`{' '.join(command)} --help` could not run: {error}"
        if result.returncode != 0:
            last = (result.stderr or result.stdout).decode(errors="replace").strip()
            last_line = last.splitlines()[-1] if last else "no output"
            return f"`{' '.join(command)} --help` exited {result.returncode}: {last_line}"
        cls.help_text = result.stdout.decode(errors="replace")
        return None

    # Lifecycle

    def start(self) -> None:
        self.base_dir = self.processes.make_dir("changeagent")
        # Every member's process first, then wait for all: they start side by side.
        for index in range(self.member_count):
            self.members.append(self._launch(index))
        for member in self.members:
            self._wait_answering(member)
        if self.member_count > 1:
            self._form_cluster()

    def _start_member(self, index: int, member: Member | None = None) -> Member:
        member = self._launch(index, member)
        self._wait_answering(member)
        return member

    def _launch(self, index: int, member: Member | None = None) -> Member:
        assert self.base_dir is not None
        if member is None:
            data_dir = self.base_dir / f"node{index}"
            member = Member(index=index, port=free_port(), data_dir=data_dir)
        argv = [*self.node_command(), "-p", str(member.port), "-d", str(member.data_dir)]
        if "--host" in self.help_text:
            argv += ["--host", LOOPBACK]  # loopback only
        if self.member_count > 1:
            config = self.base_dir / f"node{index}.yaml"
            if not config.exists():
                config.write_text(CLUSTER_CONFIG)
            argv += ["-f", str(config)]
        member.process = self.processes.start(f"changeagent-{index}", argv, self.base_dir,
                                              env=env_without_proxies())
        return member

    def _wait_answering(self, member: Member) -> None:
        port = member.port
        wait_until(lambda: http_status(f"http://{LOOPBACK}:{port}/changes?limit=1") == 200,
                   START_TIMEOUT_SECONDS, f"changeagent node {member.index} to answer",
                   member.process, interval=0.02)

    def restart_member(self, index: int) -> None:
        member = self.members[index]
        if member.process is not None:
            self.processes.stop(member.process)
        self._start_member(index, member)

    def _add_to_cluster(self, target_port: int, member: Member) -> None:
        """POST /cluster/members (form `address=127.0.0.1:PORT`); 200 once it is a voter."""
        form = urllib.parse.urlencode({"address": f"{LOOPBACK}:{member.port}"}).encode()
        request = urllib.request.Request(f"http://{LOOPBACK}:{target_port}/cluster/members",
                                         data=form)
        try:
            with _OPENER.open(request, timeout=ADD_MEMBER_TIMEOUT_SECONDS) as response:
                response.read()
                return
        except urllib.error.HTTPError as error:
            answer = f"{error.code}: {error.read()[:300]!r}"
        except OSError as error:
            answer = f"nothing ({error})"
        raise BenchError(f"POST /cluster/members address={LOOPBACK}:{member.port} on port "
                         f"{target_port} answered {answer}")

    def _form_cluster(self) -> None:
        first = self.members[0]
        for member in self.members:
            self._add_to_cluster(first.port, member)
        self.wait_leader(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._post_ok(self.members[self.leader_index()].port):
                return
            time.sleep(0.1)
        raise BenchError("the cluster was formed but no write succeeded within 30 s")

    def _post_ok(self, port: int) -> bool:
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{port}/changes", data=b'{"data":"warm-up"}',
            headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(request, timeout=5) as response:
                return int(response.status) == 200
        except OSError:
            return False

    # Load

    def wrk_write(self, member: int | None = None) -> tuple[str, str, dict[str, str]] | None:
        port = self.members[self.leader_index() if member is None else member].port
        return f"http://{LOOPBACK}:{port}/changes", "changeagent_post.lua", {}

    async def connect(self, member: int | None = None) -> HttpConnection:
        index = self.leader_index() if member is None else member
        return await http_connect(self.members[index].port)

    async def write(self, connection: HttpConnection, sequence: int) -> None:
        raw = self.post_raw_cache.get(connection.port)
        if raw is None:
            raw = connection.build("POST", "/changes", b'{"data":' + PAYLOAD + b"}")
            self.post_raw_cache[connection.port] = raw
        status, body = await connection.request_raw(raw)
        if status != 200:
            raise WriteFailed(f"changeagent POST /changes answered {status}: {body[:200]!r}")
        identifier = orjson.loads(body)["_id"]
        if identifier > self.last_id:
            self.last_id = identifier

    async def preload(self, count: int, deadline: float) -> int:
        """wrk at 256 connections when available (5,000-6,000 writes/s into 3 members on
        the 2-core machine, against 3,900-5,700 for 256 asyncio clients), then one last
        write whose id is the log's end (`last_cursor`); else 256 asyncio clients."""
        if count <= 0:
            return 0
        if not wrk_available() or count <= 1:
            return await concurrent_writes(self, count, PRELOAD_CONNECTIONS, deadline)
        url, _script, _env = self.wrk_write()  # type: ignore[misc]
        connections = max(1, min(PRELOAD_CONNECTIONS, count // 4))
        result = await asyncio.to_thread(
            run_wrk_preload, url, "changeagent_preload.lua", count - 1, connections,
            deadline - time.monotonic())
        connection = await self.connect()
        try:
            await self.write(connection, 0)  # the last change: its id is the end of the log
        finally:
            connection.close()
        return int(result["ok"]) + 1

    async def read_page(self, connection: HttpConnection, cursor: Any) -> tuple[int, Any]:
        status, body = await connection.request("GET", f"/changes?since={cursor}&limit={PAGE_SIZE}")
        if status != 200:
            raise BenchError(f"changeagent GET /changes answered {status}: {body[:200]!r}")
        changes = orjson.loads(body)["changes"]
        if changes:
            cursor = int(changes[-1]["_id"])
        return len(changes), cursor

    async def end_cursor(self, connection: HttpConnection) -> int:
        cursor = 0
        while True:
            _status, body = await connection.request("GET", f"/changes?since={cursor}&limit=10000")
            document = orjson.loads(body)
            if document["changes"]:
                cursor = int(document["changes"][-1]["_id"])
            if document.get("atEnd", True) or not document["changes"]:
                return cursor

    async def subscribe(self, connection: HttpConnection, from_end: bool = True) -> Subscription:
        cursor = await self.end_cursor(connection) if from_end else 0
        return LongPoll(connection, cursor, block_seconds=60)

    def waiting_consumers(self, member: int = 0) -> int | None:
        """Long-polls the node holds (`longPolls` of /diagnostics/raft)."""
        try:
            document = orjson.loads(_http(self.members[member].port, "/diagnostics/raft"))
        except (OSError, ValueError):
            return None
        value = document.get("longPolls")
        return int(value) if isinstance(value, int) else None

    # Clusters

    def leader_index(self) -> int:
        if len(self.members) == 1:
            return 0
        for member in self.members:
            if member.process is None:
                continue
            try:
                state = _http(member.port, "/diagnostics/raft/state", timeout=1).strip()
            except OSError:
                continue
            if state == b"Leader":
                return member.index
        raise LookupError("no leader")

    def raft_terms(self) -> dict[int, int] | None:
        terms = {}
        for member in self.members:
            if member.process is None:
                continue
            terms[member.index] = int(orjson.loads(_http(member.port, "/diagnostics/raft"))["term"])
        return terms

    def add_member(self) -> Member:
        index = len(self.members)
        member = self._start_member(index)
        self.members.append(member)
        member.joined_at = time.perf_counter()
        self._add_to_cluster(self.members[self.leader_index()].port, member)
        return member

    def remove_member(self, member: Member) -> None:
        """DELETE /cluster/members/{id} on the leader, then stop the node, drop its data."""
        node_id = _http(member.port, "/diagnostics/id").decode().strip()
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.members[self.leader_index()].port}/cluster/members/"
            f"{node_id}", method="DELETE")
        try:
            with _OPENER.open(request, timeout=REMOVE_MEMBER_TIMEOUT_SECONDS) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise BenchError(f"DELETE /cluster/members/{node_id} answered {error.code}: "
                             f"{error.read()[:300]!r}") from error
        self._drop(member)

    def member_has(self, member: Member, last_sequence: int, last_cursor: Any) -> bool:
        try:
            body = _http(member.port, f"/changes?since={int(last_cursor) - 1}&limit=1", timeout=2)
        except OSError:
            return False
        changes = orjson.loads(body).get("changes", [])
        return bool(changes) and int(changes[0]["_id"]) >= int(last_cursor)

    def last_cursor(self) -> Any:
        return self.last_id


def variant(name: str, command: list[str]) -> type[ChangeAgent]:
    """changeagent started with another command (another tree of it, e.g. the one before
    a change: `python -m bench --base REV`), measured beside this one as system `name`."""
    return type(f"ChangeAgent_{name}", (ChangeAgent,),
                {"name": name, "command": command, "help_text": ""})
