"""Read-only members on real processes behind the LinkProxy: 3 voters and 2
learners lose 2 voters (writes answer 503 everywhere, the learners still serve
every committed change, in pages and feeds, and hold long-polls) and converge
once the voters are back; a member promoted and demoted through the API (the
leader demoting itself too) shows its role in /cluster, and the quorum follows."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson

from tests.cluster.harness import (
    Outcome,
    ProxiedCluster,
    all_changes,
    call,
    post,
    post_until_acknowledged,
    proxied_cluster,
)
from tests.support.cluster import ClusterNode
from tests.support.server import wait_until

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}
LONG_POLL_S = 120
# A write without a quorum answers 503 after the commit timeout (3 s); the client
# waits longer, so a slow machine cannot turn that answer into a client timeout.
ANSWER_S = 30.0


def add_read_only(
    cluster: ProxiedCluster, node: ClusterNode, via: ClusterNode, as_json: bool = False
) -> dict[str, Any]:
    """POST /cluster/members with role=learner through `via`."""
    address = cluster.addresses[node.name]
    if as_json:
        body, headers = orjson.dumps({"address": address, "role": "learner"}), JSON
    else:
        body, headers = f"address={address}&role=learner".encode(), FORM
    answer = via.request("POST", "/cluster/members", body, headers, timeout_s=60)
    assert answer.status == 200, (answer.status, answer.body)
    document: dict[str, Any] = answer.json()
    return document


def set_role(node: ClusterNode, member: ClusterNode, role: str, as_json: bool = False) -> Outcome:
    path = f"/cluster/members/{member.node_id()}"
    if as_json:
        body, headers = orjson.dumps({"role": role}), JSON
    else:
        body, headers = f"role={role}".encode(), FORM
    return call(lambda: node.request("PUT", path, body, headers, timeout_s=60))


def assert_roles(
    cluster: ProxiedCluster, nodes: list[ClusterNode], voters: list[ClusterNode]
) -> None:
    """Every one of `nodes` shows `voters` as the voters, the other members of
    `nodes` as read-only learners, and the quorum of that many voters."""
    voter_ids = sorted(node.node_id() for node in voters)
    learner_ids = sorted(node.node_id() for node in nodes if node not in voters)
    expected = {**dict.fromkeys(voter_ids, "voter"), **dict.fromkeys(learner_ids, "learner")}
    for node in nodes:
        document = node.request("GET", "/cluster").json()
        assert document["roles"] == expected, (node.name, document)
        assert document["readOnly"] == learner_ids, (node.name, document)
        assert document["quorum"] == len(voter_ids) // 2 + 1, (node.name, document)
        status = cluster.raft(node)
        assert status is not None
        assert (status["voters"], status["learners"]) == (voter_ids, learner_ids), node.name
        assert status["roles"] == expected and status["quorum"] == document["quorum"]


def long_poll(node: ClusterNode, since: int, answers: list[Outcome]) -> threading.Thread:
    path = f"/changes?since={since}&block={LONG_POLL_S}"
    thread = threading.Thread(
        target=lambda: answers.append(
            call(lambda: node.request("GET", path, timeout_s=LONG_POLL_S + 30))
        )
    )
    thread.start()
    return thread


def test_read_only_members_serve_every_committed_change_while_the_voters_are_down(
    tmp_path: Path,
) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        voters = list(cluster.nodes)
        readers = [cluster.add_node("n4"), cluster.add_node("n5")]
        for reader in readers:
            cluster.start_node(reader)
        leader = cluster.leader()
        follower = next(node for node in voters if node is not leader)
        first = add_read_only(cluster, readers[0], via=leader)
        assert first["roles"][readers[0].node_id()] == "learner", first
        add_read_only(cluster, readers[1], via=follower, as_json=True)  # forwarded
        everyone = cluster.nodes
        for number in range(30):  # through every member: the learners forward
            written = post(everyone[number % 5], {"data": {"before": number}})
            assert written.ok, written
        cluster.wait_converged()
        assert_roles(cluster, everyone, voters)
        for reader in readers:
            assert cluster.state(reader) == "Learner"
        committed = cluster.assert_same_lists()
        assert len(committed) == 30

        # Two voters stop: no quorum, so no write commits, through any member.
        stopped = [leader, follower]
        for node in stopped:
            assert node.stop() == 0, node.name
        remaining = [node for node in everyone if node not in stopped]
        for node in remaining:
            refused = post(
                node, {"data": f"through {node.name} without a quorum"}, timeout_s=ANSWER_S
            )
            assert refused.status == 503, (node.name, refused)
            assert isinstance(refused.body["error"], str), refused.body
        # Both learners still serve every committed change, pages and long-polls.
        last_id = committed[-1]["_id"]
        for reader in readers:
            assert all_changes(reader) == committed, reader.name
            page = reader.request("GET", f"/changes?since={committed[-2]['_id']}&block=30")
            assert page.status == 200 and page.json()["changes"] == [committed[-1]]
            feed = reader.request("GET", "/changes?feed=continuous&since=0&limit=30")
            assert feed.status == 200, (reader.name, feed.body)
            lines = [orjson.loads(line) for line in feed.body.splitlines() if line.strip()]
            assert lines == committed, reader.name
        waiting: dict[str, list[Outcome]] = {reader.name: [] for reader in readers}
        threads = [long_poll(reader, last_id, waiting[reader.name]) for reader in readers]

        # The voters come back: everyone converges, and the long-polls wake.
        for node in stopped:
            cluster.start_node(node)
        cluster.wait_converged(everyone, timeout_s=60)
        # Through a learner, so forwarded: an election can still follow the
        # convergence (a 503, "retry with the same Idempotency-Key").
        after = post_until_acknowledged(readers[1], {"data": "after the outage"}, "after")
        assert after.ok, after
        for thread in threads:
            thread.join(LONG_POLL_S + 40)
            assert not thread.is_alive()
        cluster.wait_converged(everyone)
        final = cluster.assert_same_lists(everyone)
        assert final[:30] == committed and final[-1] == after.body
        assert [c for c in final if c["data"] == "after the outage"] == [after.body]  # once
        # A refused write "may have taken effect": the leader left running (the
        # stopped one handed it leadership) appended it, and a voter that came back
        # may hold it and win. Those may be in between, each once; nothing else.
        refused_data = [f"through {node.name} without a quorum" for node in remaining]
        between = [change["data"] for change in final[30:-1]]
        assert len(set(between)) == len(between) <= len(refused_data), between
        assert set(between) <= set(refused_data), between
        for reader in readers:
            (answer,) = waiting[reader.name]
            assert answer.ok, (reader.name, answer)
            woken = answer.body["changes"]
            assert woken and woken == final[30 : 30 + len(woken)], (reader.name, woken)
        assert_roles(cluster, everyone, voters)


def test_a_member_is_promoted_and_demoted_and_the_quorum_follows(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        voters = list(cluster.nodes)
        reader = cluster.add_node("n4")
        cluster.start_node(reader)
        leader = cluster.leader()
        follower = next(node for node in voters if node is not leader)
        add_read_only(cluster, reader, via=leader)
        everyone = cluster.nodes
        cluster.wait_converged()
        assert_roles(cluster, everyone, voters)
        # Adding it again with another role conflicts.
        again = leader.request(
            "POST", "/cluster/members", f"address={cluster.addresses['n4']}", FORM, timeout_s=60
        )
        assert again.status == 409 and "role=voter" in again.json()["error"], again.body

        # Promote it through a follower (forwarded to the leader) once it streams (409
        # before that): 4 voters, quorum 3.
        wait_until(lambda: peer_state(cluster, leader, reader) == "replicate", 15, 0.05)
        promoted = set_role(follower, reader, "voter")
        assert promoted.ok, promoted
        assert promoted.body["roles"][reader.node_id()] == "voter", promoted.body
        assert set_role(leader, reader, "voter").ok  # the role it has: nothing to do
        cluster.wait_converged()
        assert_roles(cluster, everyone, everyone)
        wait_until(lambda: cluster.state(reader) == "Follower", 15, 0.05)
        # The quorum is 3 of 4 now: with the new voter and one other stopped, the
        # two left cannot commit.
        other = next(node for node in voters if node not in (leader, follower))
        for node in (reader, other):
            cluster.pause(node)
        assert post(leader, {"data": "two of four"}, timeout_s=ANSWER_S).status == 503
        for node in (reader, other):
            cluster.resume(node)
        cluster.wait_converged(timeout_s=60)

        # Demote it back (JSON this time; the leader may be the new voter itself):
        # 3 voters, quorum 2, even with it stopped.
        demoted = set_role(cluster.leader(), reader, "learner", as_json=True)
        assert demoted.ok, demoted
        assert demoted.body["readOnly"] == [reader.node_id()], demoted.body
        leader = cluster.leader(among=voters)
        cluster.wait_converged()
        assert_roles(cluster, everyone, voters)
        wait_until(lambda: cluster.state(reader) == "Learner", 15, 0.05)
        cluster.pause(reader)
        assert post(leader, {"data": "three voters, the learner paused"}).ok
        cluster.resume(reader)

        # The leader demotes itself: it hands over and follows as a learner.
        rest = [node for node in voters if node is not leader]
        itself = set_role(leader, leader, "learner")
        assert itself.ok, itself
        new_leader = cluster.leader(among=rest)
        wait_until(lambda: cluster.state(leader) == "Learner", 15, 0.05)
        cluster.wait_converged()
        assert_roles(cluster, everyone, rest)
        assert post(leader, {"data": "through the demoted leader"}).ok

        # Promote the old leader again once it streams: three voters.
        wait_until(lambda: peer_state(cluster, new_leader, leader) == "replicate", 15, 0.05)
        assert set_role(rest[0], leader, "voter").ok
        cluster.wait_converged()
        assert_roles(cluster, everyone, voters)

        # With one voter down, demoting another would leave voters of which only
        # the leader is reachable: refused, nothing changes.
        leader = cluster.leader()
        down, kept = (node for node in voters if node is not leader)
        down_id = down.node_id()
        cluster.crash(down)
        wait_until(lambda: peer_field(cluster, leader, down_id, "reachable") is False, 15, 0.05)
        refused = set_role(leader, kept, "learner")
        assert refused.status == 409 and "no quorum" in refused.body["error"], refused
        assert post(kept, {"data": "still three voters"}).ok
        cluster.start_node(down)
        cluster.wait_converged(timeout_s=60)
        assert_roles(cluster, everyone, voters)
        cluster.assert_same_lists()


def peer_field(cluster: ProxiedCluster, leader: ClusterNode, peer_id: str, name: str) -> Any:
    """A field of the leader's view of one peer (None when it shows none)."""
    status = cluster.raft(leader)
    peer = status["peers"].get(peer_id) if status is not None else None
    return peer[name] if peer is not None else None


def peer_state(cluster: ProxiedCluster, leader: ClusterNode, peer: ClusterNode) -> Any:
    return peer_field(cluster, leader, peer.node_id(), "state")
