"""Seeds on real processes: a node joining a cluster whose log is long gets the
leader's committed log as a file (`node/seeding.py`), then replicates from its
end; writes during the join are not lost; below the threshold, or with
`--seed-entries 0`, the log comes by APPENDs as before."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from changeagent.node.seeding import STAGING_PREFIX
from tests.cluster.harness import (
    Outcome,
    ProxiedCluster,
    Writer,
    all_changes,
    call,
    check_acknowledged,
    get,
    post,
    preload,
    proxied_cluster,
)
from tests.support.cluster import ClusterNode
from tests.support.server import wait_until

SEED_ENTRIES = 300
PRELOAD = 1_000


def _counter(node: ClusterNode, name: str) -> float:
    text = node.request("GET", "/metrics").body.decode()
    match = re.search(rf"^{name}_total (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} is not in /metrics"
    return float(match.group(1))


def _seeded(node: ClusterNode) -> float:
    return _counter(node, "changeagent_seeded_entries")


def _form_loaded(cluster: ProxiedCluster) -> None:
    """The founder takes PRELOAD changes (with keys and tags) while standalone; then
    the two others join it."""
    founder = cluster.nodes[0]
    preload(founder, PRELOAD, threads=8)
    for number in range(5):
        assert post(founder, {"data": {"keyed": number}, "tags": ["keyed"]}, f"k{number}").ok
    cluster.form()


def test_joining_nodes_take_a_seed_and_then_replicate(tmp_path: Path) -> None:
    arguments = ["--seed-entries", str(SEED_ENTRIES)]
    with proxied_cluster(tmp_path, 3, arguments, form=False) as cluster:
        founder, second, third = cluster.nodes
        _form_loaded(cluster)
        assert _counter(founder, "changeagent_seeds_sent") == 2
        for joined in (second, third):
            # The seed is the committed log when the copy began: all of the preload.
            assert _seeded(joined) >= PRELOAD + 5, joined.name
        assert _seeded(founder) == 0
        # A 4th joins while a client writes through every member: nothing acknowledged
        # is lost, and the new member ends with the same list as the others.
        writer = Writer(cluster, "during-join", lambda: cluster.nodes[:3]).start()
        wait_until(lambda: len(writer.acknowledged) >= 20, 30, 0.01)
        fourth = cluster.add_node("n4")
        cluster.start_node(fourth)
        cluster.join(fourth, via=second)
        wait_until(lambda: len(writer.acknowledged) >= 200, 60, 0.01)
        writer.stop()
        assert _seeded(fourth) >= PRELOAD + 5 + 20
        assert post(fourth, {"data": "through the seeded member"}).ok
        cluster.wait_converged()
        reference = cluster.assert_same_lists()
        check_acknowledged(cluster.lists(), [writer])
        # What the seed carried serves as on the founder: tag filters and keys.
        keyed = fourth.request("GET", "/changes?tag=keyed&limit=100").json()["changes"]
        assert [change["data"]["keyed"] for change in keyed] == list(range(5))
        again = post(second, {"data": {"keyed": 2}, "tags": ["keyed"]}, "k2")
        assert again.ok and again.body["_id"] == keyed[2]["_id"]
        # A seeded member restarts from its own disk with everything.
        fourth.kill()
        cluster.start_node(fourth)
        cluster.wait_converged()
        assert all_changes(fourth) == reference


def test_no_seed_below_the_threshold_or_when_switched_off(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3, ["--seed-entries", "0"], form=False) as cluster:
        founder, second, third = cluster.nodes
        _form_loaded(cluster)
        assert _counter(founder, "changeagent_seeds_sent") == 0
        assert _seeded(second) == _seeded(third) == 0
        cluster.assert_same_lists()


def test_a_node_killed_while_it_takes_a_seed_joins_after_its_restart(tmp_path: Path) -> None:
    """The joining node dies mid-seed (its staging file is there): the leader adds it
    anyway, and once restarted it catches up by replication; nothing is left over."""
    arguments = ["--seed-entries", "100"]
    with proxied_cluster(tmp_path, 3, arguments, form=False) as cluster:
        founder, second, third = cluster.nodes
        preload(founder, 3_000, threads=8)
        cluster.join(founder, via=founder)
        cluster.join(second, via=founder)
        cluster.wait_converged([founder, second])
        # Everything the leader sends the third is held 300 ms: the seed takes seconds.
        cluster.proxy.delay(founder.name, third.name, 300)
        answers: list[Outcome] = []
        adding = threading.Thread(target=lambda: answers.append(_add(founder, cluster, third)))
        adding.start()
        staged = wait_until(lambda: list(third.data_dir.glob(f"{STAGING_PREFIX}*")), 30, 0.005)
        assert staged
        third.kill()
        cluster.proxy.heal()
        cluster.start_node(third)
        assert not list(third.data_dir.glob(f"{STAGING_PREFIX}*"))
        adding.join(60)
        assert not adding.is_alive() and answers
        # It is a member now (added after the failed seed): it becomes a voter.
        wait_until(lambda: _roles(founder).get(third.node_id()) == "voter", 60, 0.05)
        assert post(third, {"data": "after the restart"}).ok
        cluster.wait_converged()
        assert len(cluster.assert_same_lists()) == 3_000 + 1


def _add(via: ClusterNode, cluster: ProxiedCluster, node: ClusterNode) -> Outcome:
    address = cluster.addresses[node.name]
    return call(
        lambda: via.request(
            "POST",
            "/cluster/members",
            f"address={address}",
            {"Content-Type": "application/x-www-form-urlencoded"},
            timeout_s=60,
        )
    )


def _roles(node: ClusterNode) -> dict[str, str]:
    answer = get(node, "/cluster")
    return dict(answer.body["roles"]) if answer.ok else {}
