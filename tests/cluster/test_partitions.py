"""Partitions and delays on peer links (LinkProxy): a minority side never
acknowledges a write, the majority goes on, and after healing all converge."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.cluster.harness import (
    COMMIT_TIMEOUT_S,
    Outcome,
    ProxiedCluster,
    all_changes,
    post,
    proxied_cluster,
)
from tests.support.cluster import ClusterNode
from tests.support.server import wait_until


class Prober:
    """Writes fresh changes (no key, no retry) to one node and records each answer."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.results: list[tuple[float, float, Outcome]] = []  # (sent, answered, outcome)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            sent = time.monotonic()
            outcome = post(self.node, {"data": {"probe": number}})
            self.results.append((sent, time.monotonic(), outcome))
            number += 1
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(COMMIT_TIMEOUT_S + 10)
        assert not self._thread.is_alive()


def cut_off(cluster: ProxiedCluster, victim: ClusterNode, shape: str) -> None:
    if shape == "isolated":
        cluster.proxy.isolate(victim.name, cluster.names)
    else:  # it hears everyone, nobody hears it
        for other in cluster.names:
            if other != victim.name:
                cluster.proxy.block(victim.name, other)


@pytest.mark.parametrize(
    ("who", "shape"),
    [("leader", "isolated"), ("follower", "isolated"), ("leader", "outbound blocked")],
)
def test_minority_never_acknowledges_majority_continues(
    tmp_path: Path, who: str, shape: str
) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        victim = leader if who == "leader" else next(n for n in cluster.nodes if n is not leader)
        majority = [node for node in cluster.nodes if node is not victim]
        cut_off(cluster, victim, shape)
        cut_at = time.monotonic()
        prober = Prober(victim)
        try:
            new_leader = cluster.leader(among=majority)
            acknowledged = []
            for number in range(10):
                outcome = post(majority[number % 2], {"data": {"majority": number}})
                assert outcome.ok, outcome
                acknowledged.append(outcome.body)
            if shape != "outbound blocked":
                # Check-quorum runs once per election timeout (1 s), so a cut-off
                # leader steps down 1-2 s after the cut; the majority may elect and
                # write before that (a race, not a bug): wait for it, bounded.
                wait_until(lambda: cluster.state(victim) != "Leader", 2 * 1.0 + 2, 0.05)
            # Long enough for several writes to the minority to run out their time.
            wait_until(lambda: time.monotonic() > cut_at + 2 * COMMIT_TIMEOUT_S, 20, 0.1)
            healed_at = time.monotonic()
        finally:
            prober.stop()
            cluster.proxy.heal()
        during = [outcome for sent, answered, outcome in prober.results if answered < healed_at]
        assert len(during) >= 2, prober.results
        assert not [o for o in during if o.ok], f"the minority acknowledged: {during}"
        assert all(o.status in (None, 503) for o in during), during
        print(
            f"\n{who} {shape}: new leader {new_leader.name}; minority answers "
            f"{sorted({str(o.status or o.error) for o in during})} x{len(during)}"
        )
        cluster.wait_converged()
        reference = cluster.assert_same_lists()
        stored = {change["_id"]: change for change in reference}
        for change in acknowledged:
            assert stored[change["_id"]] == change
        for _, _, outcome in prober.results:
            if outcome.ok:  # answered after healing: then it really is committed
                assert stored.get(outcome.body["_id"]) == outcome.body
        assert post(victim, {"data": "after healing"}).ok


def test_delayed_links_slow_writes_but_lose_nothing(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        for source in cluster.names:
            for target in cluster.names:
                if source != target:
                    cluster.proxy.delay(source, target, 150)
        acknowledged = []
        latencies = []
        for number in range(15):
            node = cluster.nodes[number % 3]
            started = time.monotonic()
            outcome = post(node, {"data": {"delayed": number}})
            latencies.append(time.monotonic() - started)
            assert outcome.ok, outcome
            acknowledged.append(outcome.body)
        # Every commit needs a round trip through the delay.
        assert sorted(latencies)[len(latencies) // 2] >= 0.25
        cluster.proxy.heal()
        cluster.wait_converged()
        reference = cluster.assert_same_lists()
        stored = {change["_id"]: change for change in reference}
        assert all(stored[change["_id"]] == change for change in acknowledged)
        print(f"\n150 ms links: median write {sorted(latencies)[7]:.2f} s")


def test_a_retry_never_acknowledges_an_uncommitted_entry(tmp_path: Path) -> None:
    """An isolated leader appends a keyed write it cannot commit and restarts; a
    retry with the same key on that node must not be answered from its log (the
    nemesis once saw such a write acknowledged, then lost when the suffix was
    replaced)."""
    with proxied_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        assert post(leader, {"data": "committed"}).ok
        cluster.proxy.isolate(leader.name, cluster.names)
        first = post(leader, {"data": "stranded"}, key="stranded-key")
        assert not first.ok  # cannot commit: 503 after the commit timeout
        # A restart forgets the in-flight proposal; the entry stays in its log.
        leader.kill()
        cluster.start_node(leader)
        retry = post(leader, {"data": "stranded"}, key="stranded-key")
        assert not retry.ok, retry
        rest = [node for node in cluster.nodes if node is not leader]
        new_leader = cluster.leader(among=rest)
        assert post(new_leader, {"data": "majority"}).ok
        cluster.proxy.heal()
        cluster.wait_converged()
        listed = [change["data"] for change in all_changes(leader)]
        assert "stranded" not in listed
        assert post(leader, {"data": "stranded"}, key="stranded-key").ok  # now it commits once
        cluster.wait_converged()
        assert [change["data"] for change in all_changes(new_leader)].count("stranded") == 1
