"""A seeded, bounded randomized run: clients write (idempotency keys, retrying with
the same key), read locally (sticky to one node) and read linearizably, while a
nemesis kills, stops, isolates, cuts one way and delays nodes and heals them.
Every operation is recorded; after healing, the history is checked.

CLUSTER_NEMESIS_SEED and CLUSTER_NEMESIS_SECONDS override the seed and length.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.cluster.harness import (
    COMMIT_TIMEOUT_S,
    ProxiedCluster,
    all_changes,
    get,
    post,
    proxied_cluster,
)
from tests.support.cluster import ClusterNode
from tests.support.server import wait_until

SEED = int(os.environ.get("CLUSTER_NEMESIS_SEED", "20240611"))
SECONDS = float(os.environ.get("CLUSTER_NEMESIS_SECONDS", "90"))
WRITERS = 4
CLIENT_TIMEOUT_S = COMMIT_TIMEOUT_S + 2


@dataclass
class History:
    """Every operation, in the order they finished, plus anomalies found on the fly."""

    operations: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The highest _id of any write acknowledged so far (linearizable reads must see it).
    acknowledged_high: int = 0
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> change

    def record(self, **operation: Any) -> None:
        with self.lock:
            self.operations.append(operation)

    def anomaly(self, text: str) -> None:
        with self.lock:
            self.anomalies.append(text)

    def acknowledge(self, key: str, change: dict[str, Any]) -> None:
        with self.lock:
            previous = self.acknowledged.get(key)
            if previous is not None and previous != change:
                self.anomalies.append(f"key {key} acknowledged as {previous} and as {change}")
            self.acknowledged[key] = change
            self.acknowledged_high = max(self.acknowledged_high, change["_id"])


class Clients:
    def __init__(self, cluster: ProxiedCluster, history: History, rng: random.Random) -> None:
        self.cluster = cluster
        self.history = history
        self.stop = threading.Event()
        self.threads = [
            *(
                threading.Thread(target=self.writer, args=(f"w{i}", rng.random()), daemon=True)
                for i in range(WRITERS)
            ),
            *(
                threading.Thread(target=self.local_reader, args=(node,), daemon=True)
                for node in cluster.nodes
            ),
            threading.Thread(target=self.linearizable_reader, args=(rng.random(),), daemon=True),
        ]
        self.pending: dict[str, tuple[str, dict[str, Any]]] = {}  # writer -> unanswered write

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT_S + 10)
            assert not thread.is_alive()

    def writer(self, name: str, seed: float) -> None:
        rng = random.Random(seed)
        number = 0
        while not self.stop.is_set():
            key = f"{name}-{number}"
            document = {"data": {"writer": name, "n": number}, "tags": [name]}
            self.pending[name] = (key, document)
            while not self.stop.is_set():
                node = rng.choice(self.cluster.nodes)
                started = time.monotonic()
                outcome = post(node, document, key, CLIENT_TIMEOUT_S)
                self.history.record(
                    client=name, op="write", key=key, node=node.name, start=started,
                    end=time.monotonic(), status=outcome.status, error=outcome.error,
                    id=outcome.body.get("_id") if outcome.ok else None,
                )  # fmt: skip
                if outcome.ok:
                    self.history.acknowledge(key, outcome.body)
                    del self.pending[name]
                    break
                self.stop.wait(0.05)
            number += 1

    def local_reader(self, node: ClusterNode) -> None:
        """Sticky to one node: what it showed once, it shows again, unchanged."""
        name = f"r-{node.name}"
        seen: dict[int, dict[str, Any]] = {}
        high = 0
        while not self.stop.is_set():
            since = max(0, high - 20)
            started = time.monotonic()
            outcome = get(node, f"/changes?since={since}&limit=200", timeout_s=CLIENT_TIMEOUT_S)
            self.history.record(
                client=name, op="read", node=node.name, start=started, end=time.monotonic(),
                status=outcome.status, error=outcome.error, since=since,
            )  # fmt: skip
            if outcome.ok:
                page = {change["_id"]: change for change in outcome.body["changes"]}
                for index in range(since + 1, high + 1):
                    if index in seen and page.get(index) != seen[index]:
                        self.history.anomaly(
                            f"{name}: read since={since} went back: _id {index} was "
                            f"{seen[index]}, now {page.get(index)} (high {high})"
                        )
                        break
                seen.update(page)
                if page:
                    high = max(high, max(page))
            self.stop.wait(0.05)

    def linearizable_reader(self, seed: float) -> None:
        """Any node: a linearizable read shows every write acknowledged before it began."""
        rng = random.Random(seed)
        while not self.stop.is_set():
            node = rng.choice(self.cluster.nodes)
            with self.history.lock:
                target = self.history.acknowledged_high
            if target == 0:
                self.stop.wait(0.05)
                continue
            started = time.monotonic()
            path = f"/changes?consistency=linearizable&since={target - 1}&limit=1"
            outcome = get(node, path, timeout_s=CLIENT_TIMEOUT_S)
            self.history.record(
                client="lin", op="linearizable-read", node=node.name, start=started,
                end=time.monotonic(), status=outcome.status, error=outcome.error, target=target,
            )  # fmt: skip
            if outcome.ok:
                changes = outcome.body["changes"]
                if not changes or changes[0]["_id"] != target:
                    self.history.anomaly(
                        f"stale linearizable read on {node.name}: _id {target} was acknowledged "
                        f"before the read began; it answered {changes[:1]}"
                    )
            self.stop.wait(0.05)


class Nemesis:
    """One fault at a time, each healed before the next, on a seeded schedule."""

    KINDS = (
        "kill", "kill-leader", "kill-all", "pause", "pause-leader", "isolate", "one-way", "delay",
    )  # fmt: skip

    def __init__(self, cluster: ProxiedCluster, history: History, rng: random.Random) -> None:
        self.cluster = cluster
        self.history = history
        self.rng = rng
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.inject(self.rng.choice(self.KINDS))
                self.stop.wait(self.rng.uniform(0.5, 2.0))  # calm between faults
        except BaseException as error:  # reported by the test
            self.error = error

    def pick(self, leader: bool) -> ClusterNode:
        if leader:
            for node in self.cluster.live():
                if self.cluster.state(node) == "Leader":
                    return node
        return self.rng.choice(self.cluster.nodes)

    def inject(self, kind: str) -> None:
        cluster, rng = self.cluster, self.rng
        node = self.pick(kind.endswith("leader"))
        hold_s = rng.uniform(1.0, 4.0)
        self.history.faults[kind] += 1
        self.history.record(client="nemesis", op=kind, node=node.name, start=time.monotonic())
        if kind == "kill-all":
            for each in cluster.nodes:
                cluster.crash(each)
            self.stop.wait(hold_s / 4)
            for each in cluster.nodes:
                cluster.start_node(each)
        elif kind.startswith("kill"):
            cluster.crash(node)
            self.stop.wait(hold_s)
            cluster.start_node(node)
        elif kind.startswith("pause"):
            cluster.pause(node)
            self.stop.wait(hold_s)
            cluster.resume(node)
        elif kind == "isolate":
            cluster.proxy.isolate(node.name, cluster.names)
            self.stop.wait(hold_s)
            cluster.proxy.heal()
        elif kind == "one-way":
            for other in cluster.names:
                if other != node.name:
                    cluster.proxy.block(node.name, other)
            self.stop.wait(hold_s)
            cluster.proxy.heal()
        else:
            ms = rng.randint(20, 400)
            for source in cluster.names:
                for target in cluster.names:
                    if source != target:
                        cluster.proxy.delay(source, target, ms)
            self.stop.wait(hold_s)
            cluster.proxy.heal()
        self.history.record(client="nemesis", op="heal", node=node.name, start=time.monotonic())


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 150)
def test_nemesis_history_has_no_anomalies(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    history = History()
    print(f"\nnemesis seed {SEED}, {SECONDS:.0f} s of faults")
    with proxied_cluster(tmp_path, 3) as cluster:
        clients = Clients(cluster, history, rng)
        nemesis = Nemesis(cluster, history, rng)
        clients.start()
        nemesis.thread.start()
        try:
            nemesis.stop.wait(SECONDS)
        finally:
            nemesis.stop.set()
            nemesis.thread.join(60)
            clients.join()
            cluster.proxy.heal()
            for node in cluster.nodes:
                cluster.resume(node)
                if not node.running:
                    cluster.start_node(node)
        assert nemesis.error is None, repr(nemesis.error)
        # Finish the writes left unanswered, with their keys: each lands exactly once.
        for _, (key, document) in sorted(clients.pending.items()):

            def finish(key: str = key, document: dict[str, Any] = document) -> bool:
                outcome = post(cluster.leader(), document, key, CLIENT_TIMEOUT_S)
                if outcome.ok:
                    history.acknowledge(key, outcome.body)
                return outcome.ok

            wait_until(finish, 60, 0.2)
        cluster.wait_converged(timeout_s=60)
        lists = {node.name: all_changes(node) for node in cluster.nodes}
        (tmp_path / "history.jsonl").write_bytes(
            b"\n".join(orjson.dumps(op) for op in history.operations)
        )
        check(history, lists)
        report(history, lists)
        assert not history.anomalies, "\n".join(history.anomalies[:20])


def check(history: History, lists: dict[str, list[dict[str, Any]]]) -> None:
    names = list(lists)
    reference = {change["_id"]: change for change in lists[names[0]]}
    for name in names:
        changes = lists[name]
        by_id = {change["_id"]: change for change in changes}
        if by_id != reference:
            differ = sorted(
                i for i in by_id.keys() | reference.keys() if by_id.get(i) != reference.get(i)
            )
            history.anomaly(f"{name} differs from {names[0]} at _ids {differ[:10]}")
        for key, change in history.acknowledged.items():
            if by_id.get(change["_id"]) != change:
                history.anomaly(
                    f"{name}: acknowledged write {key} (_id {change['_id']}) lost or replaced "
                    f"by {by_id.get(change['_id'])}"
                )
        keys: dict[tuple[str, int], int] = {}
        for change in changes:
            data = change.get("data")
            if isinstance(data, dict) and "writer" in data:
                identity = (data["writer"], data["n"])
                if identity in keys:
                    history.anomaly(
                        f"{name}: write {identity} stored twice: _id {keys[identity]} and "
                        f"{change['_id']} (same idempotency key)"
                    )
                keys[identity] = change["_id"]


def report(history: History, lists: dict[str, list[dict[str, Any]]]) -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    for op in history.operations:
        if op["client"] != "nemesis":
            outcomes[f"{op['op']} {op.get('status') or op.get('error')}"] += 1
    print(f"operations: {sum(outcomes.values())}: {dict(sorted(outcomes.items()))}")
    print(
        f"faults injected: {sum(history.faults.values())}: {dict(sorted(history.faults.items()))}"
    )
    print(
        f"acknowledged writes: {len(history.acknowledged)}; changes on each node: "
        f"{ {name: len(changes) for name, changes in lists.items()} }"
    )
    print(f"anomalies: {len(history.anomalies)}")
    for anomaly in history.anomalies[:20]:
        print("  " + anomaly)
