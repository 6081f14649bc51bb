"""Crashes and stalls of real processes: kill -9 of the leader under load, SIGSTOP
of the leader past the election timeout, kill -9 of every node at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.cluster.harness import (
    Outcome,
    Writer,
    all_changes,
    check_acknowledged,
    post,
    proxied_cluster,
)
from tests.support.server import wait_until


def test_kill_leader_under_load_writes_resume_and_nothing_is_lost(tmp_path: Path) -> None:
    # The default commit timeout (30 s), and clients that wait longer than it: the
    # time until writes resume is then the node's doing, not the client's timeout.
    with proxied_cluster(tmp_path, 3, ["--commit-timeout", "30"]) as cluster:
        writers = [Writer(cluster, f"w{i}", cluster.live, timeout_s=40).start() for i in range(3)]
        try:
            wait_until(lambda: sum(len(w.acknowledged) for w in writers) >= 30, 30)
            leader = cluster.leader()
            killed_at = time.monotonic()
            cluster.crash(leader)

            def resumed() -> float | None:
                after = [end for w in writers for start, end in w.ack_times if start > killed_at]
                return min(after) if after else None

            first_ack: float = wait_until(resumed, 60, 0.01)
            failover_s = first_ack - killed_at
            print(f"\nfailover: first acknowledged write {failover_s:.2f} s after kill -9")
            new_leader = cluster.leader()
            assert new_leader is not leader
            count = sum(len(w.acknowledged) for w in writers)
            wait_until(lambda: sum(len(w.acknowledged) for w in writers) >= count + 30, 30)
            cluster.start_node(leader)  # comes back as a follower and catches up
        finally:
            for writer in writers:
                writer.stop()
        assert failover_s < 10, failover_s
        cluster.wait_converged()
        counts = check_acknowledged(cluster.lists(), writers)
        cluster.assert_same_lists()
        assert counts["acknowledged"] >= 60


def test_stopped_leader_steps_down_and_acknowledges_nothing_uncommitted(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        old = cluster.leader()
        for number in range(5):
            assert post(old, {"data": {"before": number}}).ok
        others = [node for node in cluster.nodes if node is not old]
        cluster.pause(old)
        answers: list[Outcome] = []
        # Sent while it is stopped: it sits in the socket until SIGCONT.
        sender = threading.Thread(
            target=lambda: answers.append(
                post(old, {"data": {"sent": "to the stopped leader"}}, timeout_s=20)
            )
        )
        sender.start()
        new = cluster.leader(among=others)
        during = post(new, {"data": {"while": "old leader stopped"}})
        assert during.ok, during
        term = cluster.raft(new)
        assert term is not None
        cluster.resume(old)
        wait_until(lambda: cluster.state(old) == "Follower", 15, 0.05)
        old_raft = cluster.raft(old)
        assert old_raft is not None and old_raft["term"] >= term["term"]
        sender.join(30)
        assert answers, "the write sent to the stopped leader never got an answer"
        cluster.wait_converged()
        reference = cluster.assert_same_lists()
        stored = {change["_id"]: change for change in reference}
        assert stored[during.body["_id"]] == during.body
        answer = answers[0]
        print(f"\nwrite sent to the stopped leader: {answer.status or answer.error}")
        if answer.ok:
            assert stored.get(answer.body["_id"]) == answer.body, "acknowledged but not committed"
        else:
            assert answer.status in (None, 503), answer


def test_kill_every_node_during_writes_then_restart_loses_nothing(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        writers = [Writer(cluster, f"w{i}", cluster.live).start() for i in range(4)]
        try:
            wait_until(lambda: sum(len(w.acknowledged) for w in writers) >= 100, 60)
            for node in cluster.nodes:
                cluster.crash(node)
        finally:
            for writer in writers:
                writer.stop()
        for node in cluster.nodes:
            cluster.start_node(node)
        cluster.wait_converged(timeout_s=30)
        before = check_acknowledged(cluster.lists(), writers)
        # Writes after the restart get fresh _ids above every acknowledged one.
        highest = max(c["_id"] for w in writers for c in w.acknowledged.values())
        after = [post(node, {"data": {"after": node.name}}) for node in cluster.nodes]
        assert all(outcome.ok for outcome in after), after
        assert all(outcome.body["_id"] > highest for outcome in after)
        cluster.wait_converged()
        check_acknowledged(cluster.lists(), writers)
        cluster.assert_same_lists()
        print(f"\nkill -9 of all: {before['acknowledged']} acknowledged writes all present")


def test_restarted_follower_shows_at_least_what_it_showed_before(tmp_path: Path) -> None:
    """Reads never go backwards on a node across a crash: what it served as committed
    is committed in its own durable state, even before it hears from the leader."""
    with proxied_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        follower = next(node for node in cluster.nodes if node is not leader)
        for number in range(30):
            assert post(leader, {"data": {"n": number}}).ok
        cluster.wait_converged()
        shown = all_changes(follower)
        cluster.crash(follower)
        cluster.proxy.isolate(follower.name, cluster.names)  # it restarts alone
        cluster.start_node(follower)
        again = all_changes(follower)
        assert again[: len(shown)] == shown, (
            f"after a restart the follower shows {len(again)} changes "
            f"(last _id {again[-1]['_id'] if again else None}), "
            f"before it showed {len(shown)} (last _id {shown[-1]['_id']})"
        )
