"""The seed walkthrough on three real processes: form, write through every node,
and every node shows the same list."""

from __future__ import annotations

from pathlib import Path

from tests.cluster.harness import post, proxied_cluster


def test_walkthrough_writes_through_every_node_and_identical_lists(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        info = leader.request("GET", "/cluster").json()
        assert len(info["members"]) == 3, info
        acknowledged = []
        for round_number in range(5):
            for node in cluster.nodes:
                outcome = post(node, {"data": {"via": node.name, "round": round_number}})
                assert outcome.ok, (node.name, outcome)
                acknowledged.append(outcome.body)
        ids = [change["_id"] for change in acknowledged]
        assert len(set(ids)) == len(ids)
        cluster.wait_converged()
        reference = cluster.assert_same_lists()
        stored = {change["_id"]: change for change in reference}
        for change in acknowledged:
            assert stored[change["_id"]] == change
        for node in cluster.nodes:
            assert cluster.state(node) in ("Leader", "Follower")
