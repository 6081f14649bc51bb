"""etcd driver: Debian's etcd-server, 1 or 3 members on loopback, HTTP/JSON gateway.

Durable defaults (etcd fsyncs its WAL before acknowledging), heartbeat 100 ms and
election timeout 1000 ms (etcd's defaults, written out). Writes: `POST /v3/kv/put`
with a new key per change; catch-up: `POST /v3/kv/range` of 100 keys at a time;
notifications: a `POST /v3/watch` stream.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
import urllib.error
import urllib.request
from typing import Any

import orjson

from bench.aioclient import HttpConnection, http_connect
from bench.procs import LOOPBACK, BenchError, env_without_proxies, free_port, wait_until
from bench.systems.base import PAGE_SIZE, PAYLOAD, Member, Subscription, System, WriteFailed

HEARTBEAT_MS = 100
ELECTION_MS = 1000
PRELOAD_PREFIX = b"c/"
TXN_SIZE = 100  # etcd's default --max-txn-ops is 128
PRELOAD_WORKERS = 8  # connections, each with one transaction of TXN_SIZE puts in flight
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _post_json(port: int, path: str, document: Any, timeout: float = 2.0) -> Any:
    request = urllib.request.Request(f"http://{LOOPBACK}:{port}{path}",
                                     data=orjson.dumps(document),
                                     headers={"Content-Type": "application/json"})
    with _OPENER.open(request, timeout=timeout) as response:
        return orjson.loads(response.read())


def preload_key(sequence: int) -> bytes:
    return PRELOAD_PREFIX + b"%012d" % sequence


class Watch(Subscription):
    """One /v3/watch stream on its own connection; every event message is an arrival."""

    def __init__(self, connection: HttpConnection, start_revision: int) -> None:
        self.connection = connection
        self.start_revision = start_revision
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        self.future: asyncio.Future[Any] | None = None
        self.pending: list[bytes] = []
        self.messages: list[bytes] = []
        connection.on_message = self._on_message
        # key "\0" with range_end "\0" watches every key.
        request = {"create_request": {"key": b64(b"\x00"), "range_end": b64(b"\x00"),
                                      "start_revision": start_revision}}
        self.stream = connection.send(connection.build("POST", "/v3/watch",
                                                       orjson.dumps(request)))

    def _on_message(self, message: bytes) -> None:
        if b'"events"' not in message:
            if b'"created"' in message and self.ready is not None and not self.ready.done():
                self.ready.set_result(True)
            return
        self.pending.append(message)
        if self.future is not None and not self.future.done():
            self.arrived_at = time.perf_counter()
            self.future.set_result(True)

    def arm(self) -> asyncio.Future[Any]:
        self.future = asyncio.get_running_loop().create_future()
        if self.pending:
            self.arrived_at = time.perf_counter()
            self.future.set_result(True)
        return self.future

    def advance(self) -> int:
        count = 0
        for message in self.pending:
            count += len(orjson.loads(message).get("result", {}).get("events", []))
        self.pending.clear()
        return count

    def clone(self, connection: Any) -> Subscription:
        return Watch(connection, self.start_revision)

    def close(self) -> None:
        self.connection.close()


class Etcd(System):
    name = "etcd"
    family = "etcd"

    def __init__(self, processes: Any, members: int = 1) -> None:
        super().__init__(processes, members)
        self.token = f"cabench-{time.time_ns()}"
        self.put_count = 0
        self.last_preloaded = -1  # highest preloaded sequence acknowledged
        self.member_ids: dict[int, str] = {}  # index -> etcd member ID (added members)

    @classmethod
    def missing_reason(cls) -> str | None:
        return None if shutil.which("etcd") else "etcd is not installed (Debian: etcd-server)"

    def _cluster_spec(self, members: list[Member]) -> str:
        return ",".join(f"e{m.index}=http://{LOOPBACK}:{m.peer_port}" for m in members)

    def _argv(self, member: Member, cluster: str, state: str) -> list[str]:
        client = f"http://{LOOPBACK}:{member.port}"
        peer = f"http://{LOOPBACK}:{member.peer_port}"
        return ["etcd", "--name", f"e{member.index}", "--data-dir", str(member.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", str(HEARTBEAT_MS),
                "--election-timeout", str(ELECTION_MS),
                # Otherwise a member add is refused (503) until every member has been
                # connected for 5 s: a pause before the join scenario's clock starts,
                # nothing it measures. The check guards against adding a member to an
                # unhealthy cluster; the bench adds one only after a full preload.
                "--strict-reconfig-check=false"]

    def start(self) -> None:
        self.base_dir = self.processes.make_dir("etcd")
        for index in range(self.member_count):
            self.members.append(Member(index=index, port=free_port(),
                                       data_dir=self.base_dir / f"e{index}",
                                       peer_port=free_port()))
        cluster = self._cluster_spec(self.members)
        for member in self.members:
            member.process = self.processes.start(
                f"etcd-{member.index}", self._argv(member, cluster, "new"), self.base_dir,
                env=env_without_proxies())
        for member in self.members:
            self._wait_healthy(member)
        self.wait_leader(30)

    def _wait_healthy(self, member: Member) -> None:
        def healthy() -> bool:
            try:
                with _OPENER.open(f"http://{LOOPBACK}:{member.port}/health", timeout=1) as r:
                    return b"true" in r.read()
            except OSError:
                return False

        wait_until(healthy, 30, f"etcd member {member.index} to be healthy", member.process)

    # Load

    def wrk_write(self, member: int | None = None) -> tuple[str, str, dict[str, str]] | None:
        port = self.members[self.leader_index() if member is None else member].port
        return f"http://{LOOPBACK}:{port}/v3/kv/put", "etcd_put.lua", {}

    async def connect(self, member: int | None = None) -> HttpConnection:
        index = self.leader_index() if member is None else member
        return await http_connect(self.members[index].port)

    async def write(self, connection: HttpConnection, sequence: int) -> None:
        self.put_count += 1
        key = b"a/%d/%012d" % (id(connection) % 100000, self.put_count)
        await self._put(connection, key)

    async def _put(self, connection: HttpConnection, key: bytes) -> None:
        body = b'{"key":"%s","value":"%s"}' % (b64(key).encode(), b64(PAYLOAD).encode())
        status, answer = await connection.request("POST", "/v3/kv/put", body)
        if status != 200:
            raise WriteFailed(f"etcd put answered {status}: {answer[:200]!r}")

    async def preload(self, count: int, deadline: float) -> int:
        """Puts in transactions of 100 (setup only: 100 changes per request)."""
        next_sequence = 0
        done = 0
        value = b64(PAYLOAD)

        async def worker() -> None:
            nonlocal next_sequence, done
            connection = await self.connect()
            try:
                while next_sequence < count and time.monotonic() < deadline:
                    first = next_sequence
                    last = min(count, first + TXN_SIZE)
                    next_sequence = last
                    puts = [{"request_put": {"key": b64(preload_key(s)), "value": value}}
                            for s in range(first, last)]
                    status, answer = await connection.request(
                        "POST", "/v3/kv/txn", orjson.dumps({"success": puts}))
                    if status != 200:
                        raise BenchError(f"etcd txn answered {status}: {answer[:200]!r}")
                    done += last - first
                    self.last_preloaded = max(self.last_preloaded, last - 1)
            finally:
                connection.close()

        await asyncio.gather(*(worker() for _ in range(PRELOAD_WORKERS)))
        return done

    def start_cursor(self) -> Any:
        return preload_key(0)

    async def read_page(self, connection: HttpConnection, cursor: Any) -> tuple[int, Any]:
        request = {"key": b64(cursor), "range_end": b64(prefix_end(PRELOAD_PREFIX)),
                   "limit": PAGE_SIZE}
        status, body = await connection.request("POST", "/v3/kv/range", orjson.dumps(request))
        if status != 200:
            raise BenchError(f"etcd range answered {status}: {body[:200]!r}")
        kvs = orjson.loads(body).get("kvs", [])
        if kvs:
            cursor = base64.b64decode(kvs[-1]["key"]) + b"\x00"
        return len(kvs), cursor

    async def watch_replay(self, count: int, seconds_max: float) -> tuple[int, float]:
        """etcd's own fast catch-up path: one watch from revision 1 over the preloaded keys.

        Returns (events received, seconds). Not scenario b's figure (that one pages with
        ranges of 100 keys, as the issue asks); shown beside it for context.
        """
        connection = await self.connect()
        received = 0
        finished = asyncio.get_running_loop().create_future()

        def on_message(message: bytes) -> None:
            nonlocal received
            received += message.count(b'"kv":')
            if received >= count and not finished.done():
                finished.set_result(True)

        connection.on_message = on_message
        request = {"create_request": {"key": b64(PRELOAD_PREFIX),
                                      "range_end": b64(prefix_end(PRELOAD_PREFIX)),
                                      "start_revision": 1}}
        began = time.perf_counter()
        connection.send(connection.build("POST", "/v3/watch", orjson.dumps(request)))
        try:
            await asyncio.wait_for(finished, seconds_max)
        except TimeoutError:
            pass
        finally:
            connection.close()
        return received, time.perf_counter() - began

    async def subscribe(self, connection: HttpConnection, from_end: bool = True) -> Subscription:
        _status, body = await connection.request("POST", "/v3/kv/range",
                                                orjson.dumps({"key": b64(b"\x00"),
                                                              "limit": 1}))
        revision = int(orjson.loads(body)["header"]["revision"])
        return Watch(connection, revision + 1)

    # Clusters

    def leader_index(self) -> int:
        if len(self.members) == 1:
            return 0
        for member in self.members:
            if member.process is None:
                continue
            try:
                status = _post_json(member.port, "/v3/maintenance/status", {}, timeout=1)
            except OSError:
                continue
            leader = status.get("leader")
            if leader and leader == status.get("header", {}).get("member_id"):
                return member.index
        raise LookupError("no leader")

    def raft_terms(self) -> dict[int, int] | None:
        terms = {}
        for member in self.members:
            if member.process is None:
                continue
            status = _post_json(member.port, "/v3/maintenance/status", {}, timeout=2)
            terms[member.index] = int(status["raftTerm"])
        return terms

    def add_member(self) -> Member:
        assert self.base_dir is not None
        index = len(self.members)
        member = Member(index=index, port=free_port(), data_dir=self.base_dir / f"e{index}",
                        peer_port=free_port())
        self._member_add(member)
        member.joined_at = time.perf_counter()
        cluster = self._cluster_spec([*self.members, member])
        member.process = self.processes.start(f"etcd-{index}",
                                              self._argv(member, cluster, "existing"),
                                              self.base_dir, env=env_without_proxies())
        self.members.append(member)
        return member

    def _member_add(self, member: Member) -> None:
        """Add the member (retried on 503: a cluster not ready for it, for 30 s at most)."""
        deadline = time.monotonic() + 30
        while True:
            leader = self.members[self.leader_index()]
            try:
                answer = _post_json(leader.port, "/v3/cluster/member/add",
                                    {"peerURLs": [f"http://{LOOPBACK}:{member.peer_port}"]},
                                    timeout=10)
                self.member_ids[member.index] = str(answer["member"]["ID"])
                return
            except urllib.error.HTTPError as error:
                if error.code != 503 or time.monotonic() > deadline:
                    raise BenchError(f"etcd member add answered {error.code}: "
                                     f"{error.read()[:200]!r}") from error
            time.sleep(0.2)

    def remove_member(self, member: Member) -> None:
        """`member remove` on the leader (the removed member then stops by itself)."""
        member_id = self.member_ids.pop(member.index, None)
        if member_id is None:
            raise BenchError(f"etcd member {member.index}: its id is unknown")
        leader = self.members[self.leader_index()]
        try:
            _post_json(leader.port, "/v3/cluster/member/remove", {"ID": member_id}, timeout=10)
        except urllib.error.HTTPError as error:
            raise BenchError(f"etcd member remove answered {error.code}: "
                             f"{error.read()[:200]!r}") from error
        self._drop(member)

    def stop_groups(self) -> list[list[Member]]:
        """Followers first, then the leader: a leader stopped with its followers tries to
        hand its leadership over to them first, and waits 7 s for it."""
        running = [m for m in self.members if m.process is not None]
        if len(running) < 2:
            return [running]
        leader = self.leader_index()
        return [[m for m in running if m.index != leader],
                [m for m in running if m.index == leader]]

    def member_has(self, member: Member, last_sequence: int, last_cursor: Any) -> bool:
        try:
            answer = _post_json(member.port, "/v3/kv/range",
                                {"key": b64(preload_key(self.last_preloaded)),
                                 "serializable": True},
                                timeout=2)
        except OSError:
            return False
        return bool(answer.get("kvs"))

    def last_cursor(self) -> Any:
        return preload_key(self.last_preloaded)

    def restart_member(self, index: int) -> None:
        member = self.members[index]
        if member.process is not None:
            self.processes.stop(member.process)
        cluster = self._cluster_spec(self.members)
        member.process = self.processes.start(f"etcd-{index}",
                                              self._argv(member, cluster, "new"),
                                              self.base_dir or member.data_dir,
                                              env=env_without_proxies())
        self._wait_healthy(member)
