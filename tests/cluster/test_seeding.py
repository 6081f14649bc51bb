"""Seeds on real processes: a node joining a cluster whose log is long gets the
leader's committed log as a file (`node/seeding.py`), then replicates from its
end; writes during the join are not lost; below the threshold, or with
`--seed-entries 0`, the log comes by APPENDs as before."""

from __future__ import annotations

import re
from pathlib import Path

from tests.cluster.harness import (
    ProxiedCluster,
    Writer,
    all_changes,
    check_acknowledged,
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
