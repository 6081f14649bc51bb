"""Clusters of real changeagent processes on loopback, for system tests.

Every node gets a fixed port (chosen free up front), so that a restarted node
is found at the address the others stored. Nodes are formed with ChangeAgent's
walkthrough: POST /cluster/members to the first node with each address, its
own first. Everything waits on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.support.server import Response, ServerProcess, wait_until

LOOPBACK = "127.0.0.1"


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process: the kernel may
    give the same ephemeral port to two probes in a row (then -p equals -cp)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


_TOLD_ON_FAILURE = ("raft: ", "membership", "leadership", "ERROR", "WARNING")


@dataclass
class ClusterNode:
    """One node: a ServerProcess pinned to its port (and cluster port with -cp)."""

    name: str
    data_dir: Path
    port: int
    extra_arguments: list[str] = field(default_factory=list)
    cluster_port: int | None = None
    server: ServerProcess | None = None
    earlier_log: list[str] = field(default_factory=list)  # of the processes before this one

    @property
    def address(self) -> str:
        """What POST /cluster/members is given: the cluster port if any, else the API."""
        return f"{LOOPBACK}:{self.cluster_port or self.port}"

    def start(self) -> ClusterNode:
        """Start the process; "{data_dir}" in extra arguments becomes this node's."""
        extra = [item.replace("{data_dir}", str(self.data_dir)) for item in self.extra_arguments]
        arguments = ["-p", str(self.port), *extra]
        if self.cluster_port is not None:
            arguments += ["-cp", str(self.cluster_port)]
        if self.server is not None:
            self.earlier_log += self.server.log
        self.server = ServerProcess(self.data_dir, arguments).start()
        return self

    def role_changes(self) -> list[str]:
        """Every "raft: ROLE, term T, leader L" line, membership change, leadership
        hand-over and error, of every process this node ran: what a failed cluster
        test prints to explain itself."""
        lines = self.earlier_log + (self.server.log if self.server is not None else [])
        return [line for line in lines if any(mark in line for mark in _TOLD_ON_FAILURE)]

    @property
    def running(self) -> bool:
        return (
            self.server is not None
            and self.server.process is not None
            and self.server.process.poll() is None
        )

    @property
    def pid(self) -> int:
        assert self.server is not None and self.server.process is not None
        return self.server.process.pid

    def stop(self) -> int:
        assert self.server is not None
        return self.server.stop()

    def kill(self) -> None:
        if self.server is not None:
            self.server.kill()

    def request(self, *arguments: Any, **keywords: Any) -> Response:
        assert self.server is not None
        return self.server.request(*arguments, **keywords)

    def post_change(self, document: Any, headers: dict[str, str] | None = None) -> Response:
        assert self.server is not None
        return self.server.post_change(document, headers)

    def get_changes(self, **parameters: Any) -> Response:
        assert self.server is not None
        return self.server.get_changes(**parameters)

    def form(self, method: str, path: str, fields: dict[str, str]) -> Response:
        assert self.server is not None
        return self.server.form(method, path, fields)

    def raft(self) -> dict[str, Any]:
        return dict(self.request("GET", "/diagnostics/raft", timeout_s=5).json())

    def state(self) -> str:
        return self.request("GET", "/diagnostics/raft/state", timeout_s=5).text

    def node_id(self) -> str:
        return self.request("GET", "/diagnostics/id", timeout_s=5).text


@dataclass
class Cluster:
    """N nodes in `base_dir`; `form()` joins them all through the first node."""

    base_dir: Path
    size: int
    extra_arguments: list[str] = field(default_factory=list)
    use_cluster_port: bool = False
    nodes: list[ClusterNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        for number in range(self.size):
            self.add_node(f"n{number + 1}")

    def add_node(self, name: str) -> ClusterNode:
        node = ClusterNode(
            name,
            self.base_dir / name,
            free_port(),
            list(self.extra_arguments),
            free_port() if self.use_cluster_port else None,
        )
        self.nodes.append(node)
        return node

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        return self

    def form(self) -> Cluster:
        """The walkthrough: POST each address (the first node's own first) to node 1."""
        first = self.nodes[0]
        for node in self.nodes:
            answer = first.form("POST", "/cluster/members", {"address": node.address})
            assert answer.status == 200, (answer.status, answer.body)
        self.wait_converged()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            if node.running:
                node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    def leader(self, timeout_s: float = 15.0) -> ClusterNode:
        """The running node that says it leads (waits for one)."""

        def find() -> ClusterNode | None:
            for node in self.running():
                try:
                    if node.state() == "Leader":
                        return node
                except OSError:
                    continue
            return None

        found: ClusterNode = wait_until(find, timeout_s, 0.05)
        return found

    def followers(self) -> list[ClusterNode]:
        leader = self.leader()
        return [node for node in self.running() if node is not leader]

    def wait_converged(self, timeout_s: float = 30.0) -> None:
        """Until the leader has committed its whole log and every running node has
        applied it (a new leader may not know yet what the one before committed)."""

        def converged() -> bool:
            status = self.leader().raft()
            commit = status["committedIndex"]
            if commit < status["lastIndex"]:
                return False
            return all(node.raft()["appliedIndex"] >= commit for node in self.running())

        wait_until(converged, timeout_s, 0.05)

    def lists(self, **parameters: Any) -> list[list[dict[str, Any]]]:
        """Every running node's change list (one page, default limit 10000)."""
        parameters.setdefault("limit", 10_000)
        return [node.get_changes(**parameters).json()["changes"] for node in self.running()]


async def _post_many(
    port: int, numbers: range, tag: str, timeout_s: float, errors: list[str]
) -> None:
    """POST one small change per number over one keep-alive connection, one at a time."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout_s)
    try:
        for number in numbers:
            body = orjson.dumps({"data": {"n": number}, "tags": [tag]})
            writer.write(
                b"POST /changes HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (LOOPBACK.encode(), len(body), body)
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = dict(
                (name.strip().lower(), value.strip())
                for name, _, value in (line.partition(":") for line in header_lines if line)
            )
            if "content-length" not in headers:
                errors.append(f"answer without Content-Length: {head!r}")
                return
            answer = await asyncio.wait_for(
                reader.readexactly(int(headers["content-length"])), timeout_s
            )
            status = int(status_line.split()[1])
            if status != 200:
                errors.append(f"{status} {answer[:200]!r}")
                return
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
        errors.append(repr(e))
    finally:
        writer.close()


def load_changes(
    port: int,
    count: int,
    connections: int = 64,
    tag: str = "preload",
    timeout_s: float = 30.0,
) -> float:
    """POST `count` small changes (`{"data": {"n": i}, "tags": [tag]}`, i = 0..count-1)
    through the real API on 127.0.0.1:`port` over `connections` keep-alive
    connections driven by one asyncio loop (cheap on the client side, so the server
    is what is measured); every answer must be 200. Returns the seconds it took."""
    errors: list[str] = []

    async def run() -> None:
        await asyncio.gather(
            *(
                _post_many(port, range(first, count, connections), tag, timeout_s, errors)
                for first in range(connections)
            )
        )

    started = time.monotonic()
    asyncio.run(run())
    elapsed = time.monotonic() - started
    assert not errors, errors[:5]
    return elapsed
