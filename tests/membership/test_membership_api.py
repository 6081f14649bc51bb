"""The membership API and replicated state, against real processes on loopback.

(Fault tolerance — kills, pauses, partitions, the nemesis — lives in tests/cluster.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import LOOPBACK, Cluster, ClusterNode, free_port
from tests.support.server import wait_until

YAML = {"Content-Type": "application/yaml"}


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[ClusterNode]:
    node = ClusterNode("solo", tmp_path / "solo", free_port()).start()
    try:
        yield node
    finally:
        node.kill()


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, 3, ["-f", "{data_dir}.yaml"]).start().form()
    try:
        yield cluster
    finally:
        cluster.kill()


def test_a_standalone_node_shows_no_cluster(standalone: ClusterNode) -> None:
    document = standalone.request("GET", "/cluster").json()
    assert document["clusterId"] == "0"
    assert document["members"] == {}
    assert standalone.request("GET", "/cluster/members").json() == {}
    assert standalone.state() == "Standalone"
    assert standalone.request("GET", "/diagnostics/raft/leader").text == "0"


def test_the_first_address_must_be_the_nodes_own(standalone: ClusterNode) -> None:
    other_port = free_port()
    answer = standalone.form("POST", "/cluster/members", {"address": f"{LOOPBACK}:{other_port}"})
    assert answer.status == 400
    assert "its own" in answer.json()["error"]
    assert standalone.state() == "Standalone"


@pytest.mark.parametrize("address", ["", "nohost", ":80", "host:0", "host:99999", "host:http"])
def test_malformed_addresses_are_refused(standalone: ClusterNode, address: str) -> None:
    answer = standalone.form("POST", "/cluster/members", {"address": address})
    assert answer.status == 400
    assert "error" in answer.json()


def test_creating_a_cluster_keeps_the_data_and_makes_the_node_leader(
    standalone: ClusterNode,
) -> None:
    first = standalone.post_change({"data": "before"}).json()
    assert first["_id"] == 2  # ChangeAgent: the first change on a fresh node is _id 2
    answer = standalone.request(
        "POST",
        "/cluster/members",
        f'{{"address": "{standalone.address}"}}',
        {"Content-Type": "application/json"},
    )
    assert answer.status == 200
    document = answer.json()
    own_id = standalone.node_id()
    assert document["clusterId"] != "0"
    assert document["members"] == {own_id: standalone.address}
    assert document["roles"] == {own_id: "voter"}
    assert document["leader"] == own_id
    assert standalone.state() == "Leader"
    assert standalone.request("GET", f"/cluster/members/{own_id}").text == standalone.address
    assert standalone.post_change({"data": "after"}).status == 200
    listed = [change["data"] for change in standalone.get_changes().json()["changes"]]
    assert listed == ["before", "after"]


def test_the_only_member_removing_itself_becomes_standalone(standalone: ClusterNode) -> None:
    standalone.form("POST", "/cluster/members", {"address": standalone.address})
    own_id = standalone.node_id()
    answer = standalone.request("DELETE", f"/cluster/members/{own_id}")
    assert answer.status == 200
    assert standalone.state() == "Standalone"
    assert standalone.post_change({"data": "still writable"}).status == 200


def test_member_lookups_answer_404_and_400(standalone: ClusterNode) -> None:
    assert standalone.request("GET", "/cluster/members/zzz").status == 404
    assert standalone.request("DELETE", "/cluster/members/zzz").status == 404
    assert standalone.request("GET", "/cluster/members/not-base36").status == 400
    answer = standalone.request(
        "POST", "/cluster/members", "address=x:1", {"Content-Type": "text/plain"}
    )
    assert answer.status == 415


def test_linearizable_reads_on_a_standalone_node(standalone: ClusterNode) -> None:
    written = standalone.post_change({"data": 1}).json()["_id"]
    answer = standalone.get_changes(consistency="linearizable")
    assert answer.status == 200
    assert [change["_id"] for change in answer.json()["changes"]] == [written]
    one = standalone.request("GET", f"/changes/{written}?consistency=linearizable")
    assert one.status == 200
    assert standalone.get_changes(consistency="eventual").status == 400


def test_a_node_holding_changes_cannot_join(tmp_path: Path, standalone: ClusterNode) -> None:
    standalone.form("POST", "/cluster/members", {"address": standalone.address})
    loaded = ClusterNode("loaded", tmp_path / "loaded", free_port()).start()
    try:
        loaded.post_change({"data": "mine"})
        answer = standalone.form("POST", "/cluster/members", {"address": loaded.address})
        assert answer.status == 400
        assert "holds changes" in answer.json()["error"]
        assert loaded.state() == "Standalone"
    finally:
        loaded.kill()


def test_a_node_of_another_cluster_cannot_join(tmp_path: Path, standalone: ClusterNode) -> None:
    standalone.form("POST", "/cluster/members", {"address": standalone.address})
    other = ClusterNode("other", tmp_path / "other", free_port()).start()
    try:
        other.form("POST", "/cluster/members", {"address": other.address})
        answer = standalone.form("POST", "/cluster/members", {"address": other.address})
        assert answer.status == 400
        assert other.request("GET", "/cluster/members").json() == {other.node_id(): other.address}
    finally:
        other.kill()


def test_unreachable_addresses_are_refused(standalone: ClusterNode) -> None:
    standalone.form("POST", "/cluster/members", {"address": standalone.address})
    address = f"{LOOPBACK}:{free_port()}"
    answer = standalone.form("POST", "/cluster/members", {"address": address})
    assert answer.status == 400
    error = answer.json()["error"]
    assert "cannot reach" in error
    assert error.count(address) == 1, error  # named once, then the reason


def test_the_walkthrough_forms_three_voters(trio: Cluster) -> None:
    ids = {node.node_id(): node.address for node in trio.nodes}
    for node in trio.nodes:
        document = node.request("GET", "/cluster").json()
        assert document["members"] == ids
        assert set(document["roles"].values()) == {"voter"}
        assert document["leader"] == trio.leader().node_id()
    assert sorted(node.state() for node in trio.nodes) == ["Follower", "Follower", "Leader"]
    status = trio.leader().raft()
    assert set(status["peers"]) == set(ids) - {status["id"]}
    assert all(peer["state"] == "replicate" for peer in status["peers"].values())


def test_writes_on_any_node_give_one_order_everywhere(trio: Cluster) -> None:
    for round_number in range(3):
        for node in trio.nodes:
            answer = node.post_change({"data": [node.name, round_number]})
            assert answer.status == 200, answer.body
    trio.wait_converged()
    lists = trio.lists()
    assert lists[0] == lists[1] == lists[2]
    assert len(lists[0]) == 9


def test_a_follower_answers_a_write_only_once_it_can_serve_it(trio: Cluster) -> None:
    follower = trio.followers()[0]
    written = follower.post_change({"data": "via follower"}).json()
    assert follower.request("GET", f"/changes/{written['_id']}").json() == written


def test_linearizable_reads_on_a_follower_see_acknowledged_writes(trio: Cluster) -> None:
    leader, follower = trio.leader(), trio.followers()[0]
    for number in range(20):
        written = leader.post_change({"data": number}).json()["_id"]
        answer = follower.get_changes(since=written - 1, consistency="linearizable")
        assert [change["_id"] for change in answer.json()["changes"]] == [written]


def test_idempotent_retries_through_different_nodes(trio: Cluster) -> None:
    key = {"Idempotency-Key": "order-42"}
    answers = [node.post_change({"data": "once"}, key).json() for node in trio.nodes]
    assert answers[0] == answers[1] == answers[2]
    trio.wait_converged()
    assert all(len(listed) == 1 for listed in trio.lists())


def test_config_put_on_a_follower_applies_everywhere(trio: Cluster) -> None:
    follower = trio.followers()[0]
    answer = follower.request(
        "PUT", "/config", "minPurgeRecords: 7\nheartbeatTimeout: 200ms\n", YAML
    )
    assert answer.status == 200, answer.body
    for node in trio.nodes:

        def applied(node: ClusterNode = node) -> bool:
            settings = yaml.safe_load(node.request("GET", "/config").text)
            return bool(settings["minPurgeRecords"] == 7)

        wait_until(applied, 10)
        on_disk = yaml.safe_load(node.data_dir.with_suffix(".yaml").read_text())
        assert on_disk["minPurgeRecords"] == 7
    settings = yaml.safe_load(trio.leader().request("GET", "/config").text)
    assert settings["heartbeatTimeout"] == "200ms"
    assert trio.leader().post_change({"data": "still committing"}).status == 200


def test_purge_removes_the_same_prefix_everywhere(trio: Cluster) -> None:
    leader = trio.leader()
    for number in range(30):
        leader.post_change({"data": number})
    answer = leader.request("PUT", "/config", "minPurgeRecords: 10\nminPurgeDuration: 1ms\n", YAML)
    assert answer.status == 200

    def purged_everywhere() -> bool:
        return all(len(listed) == 10 for listed in trio.lists())

    wait_until(purged_everywhere, 20, 0.1)
    lists = trio.lists()
    assert lists[0] == lists[1] == lists[2]
    first_retained = {node.raft()["firstIndex"] for node in trio.nodes}
    assert len(first_retained) == 1


def test_a_leader_shut_down_gracefully_hands_over_leadership(trio: Cluster) -> None:
    leader = trio.leader()
    term = leader.raft()["term"]
    leader.post_change({"data": "before"})
    assert leader.stop() == 0
    assert any("leadership handed to node" in line for line in leader.server.log)  # type: ignore[union-attr]
    successor = trio.leader()
    assert successor is not leader
    assert successor.raft()["term"] == term + 1  # one election, by TimeoutNow: no split vote
    assert successor.post_change({"data": "after"}).status == 200


def test_a_long_poll_on_a_follower_wakes_on_its_own_commit(trio: Cluster) -> None:
    leader, follower = trio.leader(), trio.followers()[0]
    last = leader.post_change({"data": "first"}).json()["_id"]
    trio.wait_converged()
    answers: list[Any] = []
    poll = threading.Thread(
        target=lambda: answers.append(follower.get_changes(since=last, block=20).json())
    )
    poll.start()
    wait_until(lambda: follower.raft()["longPolls"] == 1, 10)
    written = leader.post_change({"data": "wakes"}).json()
    poll.join(15)
    assert answers and answers[0]["changes"] == [written]


def test_a_new_member_after_a_purge_starts_from_the_snapshot(tmp_path: Path, trio: Cluster) -> None:
    leader = trio.leader()
    # Settings first, so that the purge removes their CONFIG entry: the newcomer can
    # only learn them from the snapshot's data.
    settings_yaml = "minPurgeRecords: 10\nminPurgeDuration: 1ms\n"
    assert leader.request("PUT", "/config", settings_yaml, YAML).status == 200
    config_index = leader.raft()["appliedIndex"]
    for number in range(30):
        leader.post_change({"data": number})
    wait_until(lambda: leader.raft()["firstIndex"] > config_index + 10, 20, 0.1)
    newcomer = trio.add_node("n4")
    newcomer.extra_arguments = ["-f", "{data_dir}.yaml"]
    newcomer.start()
    answer = leader.form("POST", "/cluster/members", {"address": newcomer.address})
    assert answer.status == 200, answer.body

    def settings_arrived() -> bool:
        settings = yaml.safe_load(newcomer.request("GET", "/config").text)
        return bool(settings["minPurgeRecords"] == 10)

    wait_until(settings_arrived, 10)
    assert leader.post_change({"data": "after join"}).status == 200
    # Stop purging, so that every node holds the same prefix when compared.
    assert leader.request("PUT", "/config", "minPurgeRecords: 0\n", YAML).status == 200
    trio.wait_converged()
    lists = trio.lists()
    assert all(listed == lists[0] for listed in lists)
    assert lists[0][-1]["data"] == "after join"
    assert newcomer.raft()["firstIndex"] == leader.raft()["firstIndex"]
