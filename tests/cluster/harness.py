"""A cluster of real processes whose peer links all pass through a LinkProxy.

Each node listens on 127.0.0.1 (API port and `-cp` cluster port) and is made a
member by the address 127.0.0.(11+i):cp, where the proxy listens: same port
number, another loopback address, so even the first node passes the "its own
address first" check of the walkthrough. Clients talk to the API directly.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from tests.cluster.linkproxy import LinkProxy
from tests.support.cluster import Cluster, ClusterNode
from tests.support.retry import retry_while_unavailable
from tests.support.server import Response, wait_until

T = TypeVar("T")
COMMIT_TIMEOUT_S = 3.0
PAGE = 10_000


@dataclass
class Outcome:
    """What one HTTP call came to: a status, or a transport error (timeout, refused)."""

    status: int | None
    body: Any = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


def call(function: Callable[[], Response]) -> Outcome:
    try:
        answer = function()
    except (OSError, http.client.HTTPException) as error:  # timeouts are OSErrors
        return Outcome(None, error=type(error).__name__)
    try:
        body = answer.json()
    except orjson.JSONDecodeError:
        body = answer.text
    return Outcome(answer.status, body)


def post(
    node: ClusterNode, document: Any, key: str = "", timeout_s: float = COMMIT_TIMEOUT_S + 3
) -> Outcome:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    return call(
        lambda: node.request(
            "POST", "/changes", orjson.dumps(document), headers, timeout_s=timeout_s
        )
    )


def post_until_acknowledged(
    node: ClusterNode, document: Any, key: str, timeout_s: float = 60.0
) -> Outcome:
    """POST `document` with the Idempotency-Key `key`, again on a 503 (no leader
    known yet, or the leader changed while the write was forwarded: "retry with
    the same Idempotency-Key", as a client is told to), until acknowledged or
    `timeout_s` has passed; the last outcome."""
    return retry_while_unavailable(
        lambda: post(node, document, key=key), lambda outcome: outcome.status, timeout_s
    )


def get(node: ClusterNode, path: str, timeout_s: float = 5.0) -> Outcome:
    return call(lambda: node.request("GET", path, timeout_s=timeout_s))


def all_changes(node: ClusterNode, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every change the node shows, page by page."""
    changes: list[dict[str, Any]] = []
    since = 0
    while True:
        answer = node.request("GET", f"/changes?since={since}&limit={PAGE}", timeout_s=timeout_s)
        assert answer.status == 200, (answer.status, answer.body)
        page = answer.json()["changes"]
        changes += page
        if len(page) < PAGE:
            return changes
        since = page[-1]["_id"]


class ProxiedCluster:
    """`size` nodes formed through a LinkProxy; see the module docstring."""

    def __init__(self, base_dir: Path, size: int, extra_arguments: list[str] | None = None):
        arguments = ["--commit-timeout", str(COMMIT_TIMEOUT_S), *(extra_arguments or [])]
        self.cluster = Cluster(base_dir, size, arguments, use_cluster_port=True)
        self.proxy = LinkProxy()
        self.addresses: dict[str, str] = {}
        self.stopped: set[str] = set()  # SIGSTOPped
        for node in self.cluster.nodes:
            self._listen(node)

    # ------------------------------------------------------------ lifecycle

    def _listen(self, node: ClusterNode) -> None:
        assert node.cluster_port is not None
        host = f"127.0.0.{11 + len(self.addresses)}"
        self.addresses[node.name] = self.proxy.listen(
            node.name, host, node.cluster_port, node.cluster_port
        )

    @property
    def nodes(self) -> list[ClusterNode]:
        return self.cluster.nodes

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def add_node(self, name: str) -> ClusterNode:
        node = self.cluster.add_node(name)
        self._listen(node)
        return node

    def start_node(self, node: ClusterNode) -> None:
        node.start()
        self.proxy.name_node(int(node.node_id(), 36), node.name)

    def start(self) -> ProxiedCluster:
        for node in self.nodes:
            self.start_node(node)
        return self

    def form(self) -> ProxiedCluster:
        first = self.nodes[0]
        for node in self.nodes:
            self.join(node, via=first)
        self.wait_converged()
        return self

    def join(self, node: ClusterNode, via: ClusterNode, timeout_s: float = 60.0) -> Response:
        answer = via.request(
            "POST",
            "/cluster/members",
            f"address={self.addresses[node.name]}",
            {"Content-Type": "application/x-www-form-urlencoded"},
            timeout_s=timeout_s,
        )
        assert answer.status == 200, (answer.status, answer.body)
        return answer

    def print_role_changes(self) -> None:
        """Each node's `role_changes()` (roles, membership, hand-overs, warnings
        and errors), of every process it ran."""
        for node in self.nodes:
            try:
                name = f"{node.name} ({node.node_id()})"
            except OSError:  # not running: its id is in the others' lines
                name = node.name
            print(f"----- {name}: role changes and errors")
            print("".join(node.role_changes()), end="")

    def close(self) -> None:
        for name in list(self.stopped):
            self.resume(self.node(name))
        for node in self.nodes:
            node.kill()
        self.proxy.close()

    # ------------------------------------------------------------ faults

    def pause(self, node: ClusterNode) -> None:
        os.kill(node.pid, signal.SIGSTOP)
        self.stopped.add(node.name)

    def resume(self, node: ClusterNode) -> None:
        if node.running:
            os.kill(node.pid, signal.SIGCONT)
        self.stopped.discard(node.name)

    def crash(self, node: ClusterNode) -> None:
        """kill -9 (a stopped process dies too)."""
        node.kill()
        self.stopped.discard(node.name)

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running and n.name not in self.stopped]

    # ------------------------------------------------------------ observation

    def state(self, node: ClusterNode) -> str | None:
        answer = get(node, "/diagnostics/raft/state", timeout_s=2)
        return answer.body if answer.ok else None

    def raft(self, node: ClusterNode) -> dict[str, Any] | None:
        answer = get(node, "/diagnostics/raft", timeout_s=2)
        return dict(answer.body) if answer.ok else None

    def leader(
        self, among: list[ClusterNode] | None = None, timeout_s: float = 20.0
    ) -> ClusterNode:
        """A node of `among` (default: live nodes) that leads, agreed by a majority of them."""

        def find() -> ClusterNode | None:
            candidates = among if among is not None else self.live()
            for node in candidates:
                if self.state(node) == "Leader":
                    return node
            return None

        found: ClusterNode = wait_until(find, timeout_s, 0.05)
        return found

    def wait_converged(
        self, nodes: list[ClusterNode] | None = None, timeout_s: float = 30.0
    ) -> None:
        """Until one node of `nodes` leads, has committed its whole log, and all of
        them applied it. (A leader's commit index alone is not enough: a new leader
        may not know yet what the one before it committed until its own no-op
        commits, so a node could still be about to apply, e.g., a membership change.)"""

        def converged() -> bool:
            members = nodes if nodes is not None else self.live()
            statuses = [self.raft(node) for node in members]
            if any(status is None for status in statuses):
                return False
            leaders = [s for s in statuses if s is not None and s["state"] == "Leader"]
            if len(leaders) != 1:
                return False
            commit = leaders[0]["committedIndex"]
            if commit < leaders[0]["lastIndex"]:
                return False
            return all(s is not None and s["appliedIndex"] >= commit for s in statuses)

        wait_until(converged, timeout_s, 0.05)

    def lists(self, nodes: list[ClusterNode] | None = None) -> dict[str, list[dict[str, Any]]]:
        return {node.name: all_changes(node) for node in (nodes or self.live())}

    def assert_same_lists(self, nodes: list[ClusterNode] | None = None) -> list[dict[str, Any]]:
        """Every node shows the same list; returns it."""
        lists = self.lists(nodes)
        names = list(lists)
        reference = lists[names[0]]
        for name in names[1:]:
            assert lists[name] == reference, f"{name} differs from {names[0]}: " + describe_diff(
                lists[names[0]], lists[name]
            )
        return reference


def describe_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    by_id_a = {c["_id"]: c for c in a}
    by_id_b = {c["_id"]: c for c in b}
    only_a = sorted(set(by_id_a) - set(by_id_b))[:5]
    only_b = sorted(set(by_id_b) - set(by_id_a))[:5]
    different = [i for i in by_id_a if i in by_id_b and by_id_a[i] != by_id_b[i]][:5]
    return (
        f"{len(a)} vs {len(b)} changes; only first {only_a}, "
        f"only second {only_b}, differ {different}"
    )


@contextlib.contextmanager
def proxied_cluster(
    base_dir: Path, size: int, extra_arguments: list[str] | None = None, form: bool = True
) -> Iterator[ProxiedCluster]:
    cluster = ProxiedCluster(base_dir, size, extra_arguments)
    try:
        cluster.start()
        if form:
            cluster.form()
        yield cluster
    except BaseException:
        cluster.print_role_changes()  # pytest shows it with the failure
        raise
    finally:
        cluster.close()


class Writer:
    """A background client writing numbered changes to a rotating set of nodes,
    retrying each with the same Idempotency-Key until acknowledged or stopped."""

    def __init__(
        self,
        cluster: ProxiedCluster,
        name: str,
        targets: Callable[[], list[ClusterNode]],
        timeout_s: float = COMMIT_TIMEOUT_S + 3,
    ) -> None:
        self.timeout_s = timeout_s
        self.cluster = cluster
        self.name = name
        self.targets = targets
        self.acknowledged: dict[str, dict[str, Any]] = {}  # key -> stored change
        # (first attempt of the key, answer) per acknowledged write
        self.ack_times: list[tuple[float, float]] = []
        self.attempts = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 10)
        assert not self._thread.is_alive(), f"writer {self.name} did not stop"

    def _run(self) -> None:
        number = 0
        turn = 0
        while not self._stop.is_set():
            key = f"{self.name}-{number}"
            document = {"data": {"writer": self.name, "n": number}, "tags": [self.name]}
            first_attempt = time.monotonic()
            while not self._stop.is_set():
                targets = self.targets()
                if not targets:
                    self._stop.wait(0.05)
                    continue
                node = targets[turn % len(targets)]
                turn += 1
                self.attempts += 1
                outcome = post(node, document, key, self.timeout_s)
                if outcome.ok:
                    self.acknowledged[key] = outcome.body
                    self.ack_times.append((first_attempt, time.monotonic()))
                    break
                self.failures += 1
                self._stop.wait(0.05)
            number += 1


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def check_acknowledged(
    lists: dict[str, list[dict[str, Any]]], writers: list[Writer]
) -> dict[str, int]:
    """Every acknowledged write is on every node, unchanged under its _id, and no
    writer's key appears twice. Returns counts for the report."""
    acknowledged = {key: change for w in writers for key, change in w.acknowledged.items()}
    for name, changes in lists.items():
        by_id = {change["_id"]: change for change in changes}
        assert len(by_id) == len(changes), f"{name}: an _id appears twice"
        for key, change in acknowledged.items():
            assert by_id.get(change["_id"]) == change, (
                f"{name}: acknowledged write {key} (_id {change['_id']}) lost or replaced: "
                f"{by_id.get(change['_id'])}"
            )
        seen: dict[tuple[str, int], int] = {}
        for change in changes:
            data = change.get("data")
            if isinstance(data, dict) and "writer" in data:
                identity = (data["writer"], data["n"])
                assert identity not in seen, (
                    f"{name}: write {identity} stored twice (_id {seen[identity]} and "
                    f"{change['_id']})"
                )
                seen[identity] = change["_id"]
    return {"acknowledged": len(acknowledged)}


def preload(node: ClusterNode, count: int, threads: int = 16, tag: str = "preload") -> float:
    """POST `count` small changes to `node` over `threads` keep-alive connections;
    returns the seconds it took."""
    started = time.monotonic()
    errors: list[str] = []

    def load(first: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
        try:
            for number in range(first, count, threads):
                body = orjson.dumps({"data": {"n": number}, "tags": [tag]})
                connection.request("POST", "/changes", body, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                if answer.status != 200:
                    errors.append(f"{answer.status}")
                    return
        except (OSError, http.client.HTTPException) as error:
            errors.append(repr(error))
        finally:
            connection.close()

    workers = [threading.Thread(target=load, args=(first,)) for first in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    assert not errors, errors[:5]
    return time.monotonic() - started
