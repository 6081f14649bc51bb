"""A follower that applies a PURGE entry in the same batch as the entries it
purges must purge, not stop (real processes behind the LinkProxy).

This test found it: the follower's Raft loop stopped with `cannot compact to N:
only M is applied` (the node compacted while applying the batch, before the core
counted the batch as applied), and the node never applied anything again. The
node now compacts after the core advances.
"""

from __future__ import annotations

from pathlib import Path

from tests.cluster.harness import all_changes, post, proxied_cluster
from tests.support.cluster import ClusterNode
from tests.support.server import wait_until

YAML = {"Content-Type": "application/yaml"}
ARGUMENTS = ["-f", "{data_dir}.yaml", "--purge-interval", "0.2"]


def stopped_loop(node: ClusterNode) -> list[str]:
    assert node.server is not None
    return [line for line in node.server.log if "cannot compact" in line or "loop stopped" in line]


def test_a_healed_follower_applies_the_purge_it_receives_with_the_purged_entries(
    tmp_path: Path,
) -> None:
    with proxied_cluster(tmp_path, 3, ARGUMENTS) as cluster:
        leader = cluster.leader()
        lagging, other = (node for node in cluster.nodes if node is not leader)
        for number in range(10):
            assert post(leader, {"data": {"n": number}}).ok
        cluster.wait_converged()
        cluster.proxy.isolate(lagging.name, cluster.names)
        behind = cluster.raft(lagging)
        assert behind is not None
        for number in range(10, 50):
            assert post(leader, {"data": {"n": number}}).ok
        answer = other.request(
            "PUT", "/config", "minPurgeRecords: 10\nminPurgeDuration: 1ms\n", YAML
        )
        assert answer.status == 200, answer.body

        def purged() -> bool:
            status = cluster.raft(leader)
            return status is not None and status["firstIndex"] > behind["lastIndex"] + 1

        wait_until(purged, 30, 0.05)
        # The same leader: what it sent the lagging member while it was cut off
        # (entries 18.. and the PURGE entry) arrives together after healing.
        cluster.proxy.heal()
        try:
            cluster.wait_converged(timeout_s=20)
        except AssertionError:
            raise AssertionError(
                f"the healed follower stopped applying: {cluster.raft(lagging)}; "
                f"{stopped_loop(lagging)[:2]}"
            ) from None
        assert not stopped_loop(lagging)
        assert all_changes(lagging) == all_changes(leader)
        assert post(lagging, {"data": "continues"}).ok
