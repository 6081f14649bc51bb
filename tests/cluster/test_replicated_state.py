"""Replicated settings and purge on real processes behind the LinkProxy:

- new Raft timeouts put on one node take effect on every node: with a 6 s
  election timeout the survivors of a kill -9 wait that long before electing,
  and back at 1 s they elect within a few seconds again; each node's -f file
  holds what it applies;
- a member cut off while the others purge needs entries nobody keeps any more:
  the new leader (the old one handed over and stopped, so nothing sent before
  the purge is still queued for it) sends it a snapshot, and it continues with
  the same list;
- a cut-off member that gets the purge in one batch with the entries it purges
  (the same leader, healed) purges and continues.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.harness import ProxiedCluster, all_changes, post, proxied_cluster
from tests.support.cluster import ClusterNode
from tests.support.server import wait_until

YAML = {"Content-Type": "application/yaml"}
SETTINGS_FILE = ["-f", "{data_dir}.yaml"]


def settings_of(node: ClusterNode) -> dict[str, Any]:
    return dict(yaml.safe_load(node.request("GET", "/config", timeout_s=5).text))


def put_settings(node: ClusterNode, text: str) -> None:
    answer = node.request("PUT", "/config", text, YAML, timeout_s=30)
    assert answer.status == 200, (node.name, answer.status, answer.body)


def wait_settings(nodes: list[ClusterNode], **expected: Any) -> None:
    """Until every node applies `expected` and its -f file says the same."""
    for node in nodes:

        def applied(node: ClusterNode = node) -> bool:
            current = settings_of(node)
            return all(current.get(name) == value for name, value in expected.items())

        def written(node: ClusterNode = node) -> bool:
            # The file is rewritten right after the settings apply (in a thread).
            on_disk = yaml.safe_load(node.data_dir.with_suffix(".yaml").read_text())
            return all(on_disk.get(name) == value for name, value in expected.items())

        wait_until(applied, 20, 0.05)
        wait_until(written, 5, 0.01)


def election_after_kill(cluster: ProxiedCluster, timeout_s: float = 60) -> float:
    """kill -9 the leader; seconds until one of the others leads."""
    leader = cluster.leader()
    rest = [node for node in cluster.live() if node is not leader]
    killed_at = time.monotonic()
    cluster.crash(leader)
    cluster.leader(among=rest, timeout_s=timeout_s)
    return time.monotonic() - killed_at


PURGING = [*SETTINGS_FILE, "--purge-interval", "0.2"]


def cut_off_one_and_purge(
    cluster: ProxiedCluster,
) -> tuple[ClusterNode, ClusterNode, ClusterNode, dict[str, Any]]:
    """10 writes every member holds; a follower cut off; 40 more; then a purge
    keeping 10, put through the other follower. Returns the leader, the cut-off
    member, the other one, and the cut-off member's status when it was cut."""
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
    put_settings(other, "minPurgeRecords: 10\nminPurgeDuration: 1ms\n")
    return leader, lagging, other, behind


def test_new_timeouts_take_effect_on_every_node(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3, SETTINGS_FILE) as cluster:
        leader = cluster.leader()
        follower = next(node for node in cluster.nodes if node is not leader)
        put_settings(follower, "electionTimeout: 6s\nheartbeatTimeout: 500ms\n")
        wait_settings(cluster.nodes, electionTimeout="6s", heartbeatTimeout="500ms")
        assert post(follower, {"data": "under slow timeouts"}).ok
        cluster.wait_converged()
        slow_s = election_after_kill(cluster)
        # The survivors wait at least their (new) election timeout after the last
        # heartbeat (500 ms apart) before they campaign.
        assert slow_s >= 5.0, slow_s
        killed = next(node for node in cluster.nodes if not node.running)
        cluster.start_node(killed)  # it reads its rewritten -f file
        assert settings_of(killed)["electionTimeout"] == "6s"
        cluster.wait_converged()

        put_settings(killed, "electionTimeout: 1s\nheartbeatTimeout: 100ms\n")
        wait_settings(cluster.nodes, electionTimeout="1s", heartbeatTimeout="100ms")
        cluster.wait_converged()
        fast_s = election_after_kill(cluster)
        print(f"\nelection after kill -9: {slow_s:.1f} s at 6s, {fast_s:.1f} s at 1s")
        assert fast_s < 5.0, fast_s
        survivors = cluster.live()
        assert post(survivors[0], {"data": "under fast timeouts"}).ok
        cluster.wait_converged()
        cluster.assert_same_lists()


def test_a_member_needing_purged_entries_gets_a_snapshot_and_continues(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3, PURGING) as cluster:
        old, lagging, new, behind = cut_off_one_and_purge(cluster)

        def purged_past_the_lagging_member() -> bool:
            statuses = [cluster.raft(node) for node in (old, new)]
            return all(
                s is not None and s["firstIndex"] > behind["lastIndex"] + 1 for s in statuses
            )

        wait_until(purged_past_the_lagging_member, 30, 0.05)
        assert [change["data"]["n"] for change in all_changes(old)] == list(range(40, 50))
        # The leader hands over to the member that kept up and stops: the new leader
        # never sent the lagging member anything, and holds none of what it misses.
        assert old.stop() == 0
        assert cluster.leader(among=[new]) is new
        cluster.proxy.heal()
        cluster.wait_converged([lagging, new])
        caught_up = cluster.raft(lagging)
        assert caught_up is not None
        assert caught_up["firstIndex"] > behind["lastIndex"] + 1, (behind, caught_up)
        assert all_changes(lagging) == all_changes(new)
        wait_settings([lagging], minPurgeRecords=10)
        # Reads below the purge point tell the same story on both.
        below = [node.request("GET", "/changes?since=1&limit=5").json() for node in (lagging, new)]
        assert below[0] == below[1] and below[0].get("missedChanges"), below
        # It continues: settings and writes through it; then the old leader returns.
        put_settings(lagging, "minPurgeRecords: 0\n")  # stop purging before comparing
        wait_settings([lagging, new], minPurgeRecords=0)
        for number in range(50, 60):
            written = post(lagging, {"data": {"n": number}})
            assert written.ok, written
        cluster.start_node(old)
        cluster.wait_converged()
        reference = cluster.assert_same_lists()
        assert [change["data"]["n"] for change in reference] == list(range(40, 60))
        statuses = [cluster.raft(node) for node in cluster.nodes]
        assert len({status["firstIndex"] for status in statuses if status}) == 1, statuses


def stopped_loop(node: ClusterNode) -> list[str]:
    assert node.server is not None
    return [line for line in node.server.log if "cannot compact" in line or "loop stopped" in line]


def test_a_healed_follower_applies_the_purge_it_receives_with_the_purged_entries(
    tmp_path: Path,
) -> None:
    """The same leader sends the cut-off member what it missed (the entries and the
    PURGE entry) in one batch once healed: it purges and goes on. The node used to
    compact while applying the batch, before the core counted the batch applied;
    its Raft loop stopped (`cannot compact to N: only M is applied`) for good."""
    with proxied_cluster(tmp_path, 3, PURGING) as cluster:
        leader, lagging, _, behind = cut_off_one_and_purge(cluster)

        def purged() -> bool:
            status = cluster.raft(leader)
            return status is not None and status["firstIndex"] > behind["lastIndex"] + 1

        wait_until(purged, 30, 0.05)
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
