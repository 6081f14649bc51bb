"""Membership changes on real processes behind the LinkProxy: one change at a time
(409 while one is in progress, on the leader and through a follower), a joining
node shows Learner while it catches up, and membership (including a removal)
survives restarts, graceful and kill -9."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson

from tests.cluster.harness import Outcome, ProxiedCluster, all_changes, call, post, proxied_cluster
from tests.support.cluster import ClusterNode
from tests.support.server import wait_until

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
LINK_DELAY_MS = 1000


def learners(cluster: ProxiedCluster, node: ClusterNode) -> list[str]:
    status = cluster.raft(node)
    return list(status["learners"]) if status is not None else []


def test_one_membership_change_at_a_time_and_the_newcomer_shows_learner(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        follower = next(node for node in cluster.nodes if node is not leader)
        follower_id = follower.node_id()
        for number in range(20):
            assert post(cluster.nodes[number % 3], {"data": {"before": number}}).ok
        fourth = cluster.add_node("n4")
        fifth = cluster.add_node("n5")
        cluster.start_node(fourth)
        cluster.start_node(fifth)
        fourth_id = fourth.node_id()
        # Everything the leader sends n4 arrives a second late: the addition (its
        # POST holds the one membership change allowed) lasts several seconds.
        cluster.proxy.delay(leader.name, fourth.name, LINK_DELAY_MS)
        joined: list[Outcome] = []
        joiner = threading.Thread(
            target=lambda: joined.append(
                call(
                    lambda: leader.request(
                        "POST",
                        "/cluster/members",
                        f"address={cluster.addresses['n4']}",
                        FORM,
                        timeout_s=60,
                    )
                )
            )
        )
        joiner.start()
        try:
            wait_until(lambda: fourth_id in learners(cluster, leader), 20, 0.01)
            refused: list[tuple[str, Any]] = []
            for via in (leader, follower):
                add = via.request(
                    "POST", "/cluster/members", f"address={cluster.addresses['n5']}", FORM
                )
                remove = via.request("DELETE", f"/cluster/members/{follower_id}")
                refused += [(f"add via {via.name}", add), (f"remove via {via.name}", remove)]
            for what, answer in refused:
                assert answer.status == 409, (what, answer.status, answer.body)
                assert isinstance(orjson.loads(answer.body)["error"], str), what
            # The newcomer applies its own addition before its promotion reaches it.
            wait_until(lambda: cluster.state(fourth) == "Learner", 20, 0.01)
            assert fourth_id in learners(cluster, fourth)
        finally:
            cluster.proxy.heal()
            joiner.join(70)
        assert joined and joined[0].ok, joined
        roles = joined[0].body["roles"]
        assert roles.get(fourth_id) == "voter" and len(roles) == 4, roles
        wait_until(lambda: cluster.state(fourth) == "Follower", 15, 0.05)
        # The change that was refused goes through now (JSON this time, via a follower).
        added = follower.request(
            "POST",
            "/cluster/members",
            orjson.dumps({"address": cluster.addresses["n5"]}),
            {"Content-Type": "application/json"},
            timeout_s=60,
        )
        assert added.status == 200, (added.status, added.body)
        fifth_id = fifth.node_id()
        cluster.wait_converged()
        for node in cluster.nodes:
            document = node.request("GET", "/cluster").json()
            assert sorted(document["roles"].values()) == ["voter"] * 5, (node.name, document)
            assert document["members"][fifth_id] == cluster.addresses["n5"]
            address = node.request("GET", f"/cluster/members/{fifth_id}").text
            assert address == cluster.addresses["n5"]
        assert post(fifth, {"data": "through the fifth"}).ok
        cluster.wait_converged()
        reference = cluster.assert_same_lists()
        assert len(reference) == 21


def cluster_view(cluster: ProxiedCluster, node: ClusterNode) -> tuple[str, dict[str, str]]:
    document = node.request("GET", "/cluster").json()
    members = node.request("GET", "/cluster/members").json()
    assert members == document["members"], (node.name, members, document)
    return document["clusterId"], members


def test_membership_and_a_removal_survive_restarts(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        fourth = cluster.add_node("n4")
        cluster.start_node(fourth)
        cluster.join(fourth, via=cluster.nodes[2])
        leader = cluster.leader()
        removed = next(node for node in cluster.nodes if node is not leader)
        answer = leader.request("DELETE", f"/cluster/members/{removed.node_id()}", timeout_s=30)
        assert answer.status == 200, (answer.status, answer.body)
        wait_until(lambda: cluster.state(removed) == "Standalone", 15, 0.05)
        members = [node for node in cluster.nodes if node is not removed]
        for number in range(9):
            assert post(members[number % 3], {"data": {"n": number}}).ok
        assert post(removed, {"data": "alone"}).ok
        cluster.wait_converged(members)
        views = {node.name: cluster_view(cluster, node) for node in members}
        distinct = {(view[0], tuple(sorted(view[1].items()))) for view in views.values()}
        assert len(distinct) == 1, views  # every member agrees
        cluster_id, member_items = distinct.pop()
        assert cluster_id != "0" and len(member_items) == 3
        assert removed.node_id() not in dict(member_items)
        lists = {node.name: all_changes(node) for node in cluster.nodes}

        for how in ("SIGTERM", "kill -9"):
            for node in cluster.nodes:
                if how == "SIGTERM":
                    assert node.stop() == 0, node.name
                else:
                    cluster.crash(node)
            for node in cluster.nodes:
                cluster.start_node(node)
            cluster.wait_converged(members, timeout_s=30)
            for node in members:
                assert cluster_view(cluster, node) == views[node.name], (how, node.name)
                assert cluster.state(node) in ("Leader", "Follower"), (how, node.name)
            assert cluster.state(removed) == "Standalone", how
            assert cluster_view(cluster, removed) == ("0", {}), how
            for node in cluster.nodes:  # nothing lost, nothing gained
                assert all_changes(node) == lists[node.name], (how, node.name)
        # Still one working cluster of three, and one store of its own.
        for node in members:
            assert post(node, {"data": {"after": node.name}}).ok
        cluster.wait_converged(members)
        cluster.assert_same_lists(members)
        assert post(removed, {"data": "still alone"}).ok
        assert [change["data"] for change in all_changes(removed)][-2:] == [
            "alone",
            "still alone",
        ]
