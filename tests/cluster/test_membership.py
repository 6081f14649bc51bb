"""Membership changes on real processes: a 4th node joins a cluster holding many
changes and catches up; removing a follower and removing the leader."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.cluster.harness import all_changes, post, proxied_cluster
from tests.support.cluster import load_changes
from tests.support.server import wait_until

# The size. On this shared 2-core machine, 64 keep-alive clients wrote
# ~1,700 acknowledged changes/s through a formed 3-node cluster and ~2,600/s into
# the same node standalone, measured side by side (docs/BENCHMARKS.md: 2,100 and
# 4,900/s on a quiet machine). So the founder is loaded through the API while it is
# still standalone; forming the cluster then makes the two other members catch up
# on all of it before the 4th joins (the test took 38-71 s here, depending on what
# else ran). CLUSTER_CATCHUP_CHANGES overrides the size.
CATCHUP_CHANGES = int(os.environ.get("CLUSTER_CATCHUP_CHANGES", "100000"))
LOAD_CONNECTIONS = 64


@pytest.mark.slow
def test_fourth_node_catches_up_and_serves_the_same_list(tmp_path: Path) -> None:
    test_started = time.monotonic()
    with proxied_cluster(tmp_path, 3, form=False) as cluster:
        founder, second, third = cluster.nodes
        load_s = load_changes(founder.port, CATCHUP_CHANGES, LOAD_CONNECTIONS)
        loaded = all_changes(founder)
        assert sorted(change["data"]["n"] for change in loaded) == list(range(CATCHUP_CHANGES))
        # The walkthrough: the founder's own address first, then the two others, each
        # of which catches up on everything as a learner before its POST is answered.
        forming_started = time.monotonic()
        cluster.form()
        form_s = time.monotonic() - forming_started
        leader = cluster.leader()
        assert leader is founder  # nothing made it step down
        # A few writes through the formed cluster, through a follower too.
        for number in range(10):
            via = (founder, second, third)[number % 3]
            assert post(via, {"data": {"formed": number}}).ok
        cluster.wait_converged()
        fourth = cluster.add_node("n4")
        cluster.start_node(fourth)
        status = cluster.raft(leader)
        assert status is not None
        target = status["committedIndex"]
        started = time.monotonic()
        cluster.join(fourth, via=second)  # through a follower

        def applied() -> bool:
            raft = cluster.raft(fourth)
            return raft is not None and raft["appliedIndex"] >= target

        wait_until(applied, 120, 0.05)
        catch_up_s = time.monotonic() - started
        held = CATCHUP_CHANGES + 10
        print(
            f"\npreload {CATCHUP_CHANGES} changes into the standalone founder over "
            f"{LOAD_CONNECTIONS} connections in {load_s:.1f} s "
            f"({CATCHUP_CHANGES / load_s:.0f}/s); 2 members joined and caught up in "
            f"{form_s:.1f} s; 4th node caught up on {held} changes in {catch_up_s:.1f} s: "
            f"{held / catch_up_s:.0f} changes/s"
        )
        wait_until(lambda: cluster.state(fourth) == "Follower", 30, 0.05)
        info = leader.request("GET", "/cluster").json()
        assert sorted(info["roles"].values()) == ["voter"] * 4, info
        last = post(fourth, {"data": "written through the new member"})
        assert last.ok, last
        cluster.wait_converged()
        # All four lists, the new member's included, are identical (read once each:
        # 100,000 changes take seconds to page through on this machine).
        reference = cluster.assert_same_lists()
        assert len(reference) == held + 1
        assert reference[:CATCHUP_CHANGES] == loaded  # forming changed nothing
        assert [change["data"] for change in reference[CATCHUP_CHANGES:]] == [
            *({"formed": number} for number in range(10)),
            "written through the new member",
        ]
        assert reference[-1] == last.body
    print(f"whole test {time.monotonic() - test_started:.1f} s")


@pytest.mark.parametrize("which", ["follower", "leader"])
def test_removed_member_keeps_its_data_and_is_standalone(tmp_path: Path, which: str) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        for number in range(20):
            assert post(cluster.nodes[number % 3], {"data": {"before": number}}).ok
        cluster.wait_converged()
        removed = leader if which == "leader" else next(n for n in cluster.nodes if n is not leader)
        rest = [node for node in cluster.nodes if node is not removed]
        removed_id = removed.node_id()
        before = all_changes(removed)
        answer = leader.request("DELETE", f"/cluster/members/{removed_id}", timeout_s=30)
        assert answer.status == 200, (answer.status, answer.body)
        wait_until(lambda: cluster.state(removed) == "Standalone", 15, 0.05)
        new_leader = cluster.leader(among=rest)
        members = new_leader.request("GET", "/cluster/members").json()
        assert removed_id not in members and len(members) == 2, members
        # The rest go on as a 2-node cluster.
        for number in range(10):
            assert post(rest[number % 2], {"data": {"after": number}}).ok
        cluster.wait_converged(rest)
        cluster.assert_same_lists(rest)
        # The removed node kept what it had and is a store of its own now.
        kept = all_changes(removed)
        assert kept[: len(before)] == before
        own = post(removed, {"data": "standalone again"})
        assert own.ok, own
        assert cluster.state(removed) == "Standalone"
        assert removed.request("GET", "/cluster/members").json() == {}
        rest_ids = {change["_id"] for change in all_changes(rest[0])}
        assert {change["_id"] for change in before} <= rest_ids
