"""SIGTERM after faults (issue #16): a 3-member cluster takes writes while members
are killed (-9, then restarted on the same data) and paused (SIGSTOP/SIGCONT);
everything is healed and the members converge on the same list; then writes go
on and every member gets SIGTERM at the same moment. Each must exit 0 within a
few seconds, and every write in flight must be answered (200, or 503 that it may
have committed), not held.

What used to happen: a member stops Raft and its peer links as soon as its own
clients' requests are done, so idle followers stopped at once while the leader's
writes in flight still needed them. Those writes then waited out the commit
timeout (30 s), and Raft ran on without a quorum (PRE_CANDIDATE, leader unknown)
until they did. Seeds alternate the two peer carriers.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.cluster.harness import Outcome, post
from tests.support.cluster import Cluster, ClusterNode
from tests.support.server import wait_until

SEEDS = (16, 1616, 161616)
FAULTS_S = 6.0
# An idle member stops in about 1 s (a leader first tries to hand leadership
# over, for at most one election timeout). With writes in flight, at most two
# election timeouts more, then ~2 s to close links to peers that do not answer.
PROMPT_EXIT_S = 8.0
STAGGER_S = 0.05
CLIENT_TIMEOUT_S = 40.0  # longer than the commit timeout: a held request shows as held
# A client may find the listener closed (refused) or be reset before it is
# accepted; anything else (a timeout, a 500) means a request was held or lost.
GONE = ("ConnectionRefusedError", "ConnectionResetError", "RemoteDisconnected", "BadStatusLine")


class Writers:
    """Threads POSTing numbered changes with Idempotency-Keys to `targets()`."""

    def __init__(self, name: str, count: int, targets: object) -> None:
        self.name = name
        self.targets = targets
        self.outcomes: list[tuple[float, Outcome]] = []  # (answered at, outcome)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(f"{name}{i}",), daemon=True)
            for i in range(count)
        ]

    def start(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = CLIENT_TIMEOUT_S + 5) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
            assert not thread.is_alive(), f"a {self.name} writer is stuck"

    def _run(self, name: str) -> None:
        number = 0
        while not self._stop.is_set():
            nodes = self.targets()  # type: ignore[operator]
            if not nodes:
                self._stop.wait(0.05)
                continue
            node = nodes[number % len(nodes)]
            document = {"data": {"writer": name, "n": number}}
            outcome = post(node, document, f"{name}-{number}", CLIENT_TIMEOUT_S)
            self.outcomes.append((time.monotonic(), outcome))
            number += 1
            if not outcome.ok:
                self._stop.wait(0.05)


def inject_faults(cluster: Cluster, rng: random.Random, paused: set[str], seconds: float) -> None:
    """kill -9 the leader or a minority member and restart it on the same data,
    or pause one member; one fault at a time, each healed before the next."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        kind = rng.choice(("kill-leader", "kill", "pause"))
        leader = kind == "kill-leader"
        node = cluster.leader(timeout_s=10) if leader else rng.choice(cluster.nodes)
        hold_s = rng.uniform(0.5, 2.0)
        if kind == "pause":
            os.kill(node.pid, signal.SIGSTOP)
            paused.add(node.name)
            time.sleep(hold_s)
            os.kill(node.pid, signal.SIGCONT)
            paused.discard(node.name)
        else:
            node.kill()
            time.sleep(hold_s)
            node.start()
        time.sleep(rng.uniform(0.2, 0.8))


def wait_same_lists(cluster: Cluster) -> None:
    def same() -> bool:
        cluster.wait_converged(timeout_s=30)
        lists = cluster.lists()
        return len(lists) == 3 and all(changes == lists[0] for changes in lists)

    wait_until(same, 30, 0.2)


def sigterm_all(nodes: list[ClusterNode], last: ClusterNode) -> dict[str, float | None]:
    """SIGTERM every node at (nearly) the same moment, `last` STAGGER_S after the
    others; seconds until each exited with 0 (None: still running after twice
    the bound, then killed by the caller)."""
    processes = {node.name: node.server.process for node in nodes if node.server}
    started = time.monotonic()
    for node in [*(n for n in nodes if n is not last), last]:
        process = processes[node.name]
        assert process is not None
        if node is last:
            time.sleep(STAGGER_S)
        process.send_signal(signal.SIGTERM)
    took: dict[str, float | None] = dict.fromkeys(processes)
    while time.monotonic() - started < 2 * PROMPT_EXIT_S:
        for name, process in processes.items():
            assert process is not None
            if took[name] is None and process.poll() is not None:
                assert process.returncode == 0, f"{name} exited with {process.returncode}"
                took[name] = round(time.monotonic() - started, 2)
        if all(seconds is not None for seconds in took.values()):
            break
        time.sleep(0.02)
    return took


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
def test_sigterm_after_faults_stops_every_member_promptly(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    carrier = "cluster-port" if seed == SEEDS[1] else "api-port"
    cluster = Cluster(tmp_path, 3, use_cluster_port=carrier == "cluster-port").start().form()
    paused: set[str] = set()
    try:
        # Faults under a write load from clients of every member.
        load = Writers(
            "f", 6, lambda: [n for n in cluster.nodes if n.running and n.name not in paused]
        ).start()
        try:
            inject_faults(cluster, rng, paused, FAULTS_S)
        finally:
            for node in cluster.nodes:
                if node.name in paused and node.running:
                    os.kill(node.pid, signal.SIGCONT)
            paused.clear()
            load.stop()
        # Heal and converge: every member shows the same list.
        for node in cluster.nodes:
            if not node.running:
                node.start()
        wait_same_lists(cluster)
        # Writes go on (clients of the leader); every member gets SIGTERM at
        # once, the leader a moment after the others (as a deploy tool's loop
        # would): it still has writes in flight, which need the followers.
        leader = cluster.leader()
        final = Writers("s", 16, lambda: [leader]).start()
        wait_until(lambda: sum(o.ok for _, o in final.outcomes) >= 20, 20, 0.01)
        signalled = time.monotonic()
        took = sigterm_all(cluster.nodes, last=leader)
        final.stop()
        print(f"\nseed {seed} ({carrier}): stopped after {took}")
        slow = {name: s for name, s in took.items() if s is None or s > PROMPT_EXIT_S}
        assert not slow, f"members still running or slow to stop after SIGTERM: {took}"
        # Every write in flight at SIGTERM was answered, none held.
        late = [o for at, o in final.outcomes if at >= signalled]
        held = [o for o in late if o.status not in (200, 503) and o.error not in GONE]
        assert not held, f"writes not answered during shutdown: {held[:5]}"
        answered_s = max((at - signalled for at, _ in final.outcomes), default=0.0)
        assert answered_s <= PROMPT_EXIT_S, f"a write was answered {answered_s:.1f} s after"
    finally:
        for node in cluster.nodes:
            if node.name in paused and node.running:
                os.kill(node.pid, signal.SIGCONT)
        cluster.kill()
