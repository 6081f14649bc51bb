"""Micro-benchmark of the pure Raft core: a 3-node in-memory cluster.

Each round the leader proposes a batch of 100 entries; every node runs its Ready
loop (persisting into an in-memory log) and the network delivers messages until
the batch is committed and applied everywhere. Prints the median of 5 runs.

    python bench/raft_core.py [--entries N] [--batch B] [--runs R]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from changeagent.raft import (
    HardState,
    Membership,
    Message,
    RaftConfig,
    RaftNode,
    Snapshot,
)
from changeagent.raft.memory_log import MemoryLog


def build_cluster() -> tuple[dict[int, RaftNode], dict[int, MemoryLog]]:
    membership = Membership(frozenset({1, 2, 3}))
    nodes: dict[int, RaftNode] = {}
    logs: dict[int, MemoryLog] = {}
    for node_id in (1, 2, 3):
        logs[node_id] = MemoryLog(Snapshot(0, 0, membership))
        config = RaftConfig(node_id, max_inflight_messages=256)
        nodes[node_id] = RaftNode(config, logs[node_id], HardState(), random.Random(node_id))
    return nodes, logs


def run_ready_loops(
    nodes: dict[int, RaftNode], logs: dict[int, MemoryLog], outbox: list[Message]
) -> int:
    applied = 0
    for node_id, node in nodes.items():
        while node.has_ready():
            ready = node.ready()
            outbox.extend(ready.messages)
            if ready.entries:
                logs[node_id].append(ready.entries)
            outbox.extend(ready.messages_after_persist)
            if node_id == 1:
                applied += len(ready.committed_entries)
            node.advance(ready)
    return applied


def settle(nodes: dict[int, RaftNode], logs: dict[int, MemoryLog]) -> int:
    outbox: list[Message] = []
    applied = run_ready_loops(nodes, logs, outbox)
    while outbox:
        batch, outbox = outbox, []
        for message in batch:
            nodes[message.target].step(message)
        applied += run_ready_loops(nodes, logs, outbox)
    return applied


def run_once(total_entries: int, batch_size: int) -> float:
    nodes, logs = build_cluster()
    nodes[1].campaign()
    settle(nodes, logs)
    payload = [(0, b"x" * 64, "")] * batch_size
    leader = nodes[1]
    started = time.perf_counter()
    applied = 0
    for _ in range(total_entries // batch_size):
        leader.propose(payload)
        applied += settle(nodes, logs)
    elapsed = time.perf_counter() - started
    if leader.commit_index != logs[1].last_index():
        raise SystemExit("benchmark cluster did not commit everything")
    return applied / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()
    rates = [run_once(arguments.entries, arguments.batch) for _ in range(arguments.runs)]
    print(
        f"raft core, 3 nodes, batches of {arguments.batch}: "
        f"{statistics.median(rates):,.0f} entries/s (median of {arguments.runs} runs; "
        f"min {min(rates):,.0f}, max {max(rates):,.0f})"
    )


if __name__ == "__main__":
    main()
