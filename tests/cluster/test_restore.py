"""A node restored from a backup of a cluster member founds a new cluster by the
walkthrough, and an empty node that joins it gets every change with its `_id`."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.cli.support import run_cli
from tests.support.cluster import Cluster, ClusterNode, free_port


def test_a_restored_member_founds_a_two_member_cluster(tmp_path: Path) -> None:
    old = Cluster(tmp_path / "old", 2).start()
    try:
        old.form()
        for number in range(30):
            via = old.nodes[number % 2]
            answer = via.post_change({"data": {"n": number}, "tags": ["t"]})
            assert answer.status == 200, answer.body
        old.wait_converged()
        follower = old.followers()[0]
        result = run_cli(
            "backup", "--server", f"http://127.0.0.1:{follower.port}",
            "--out", str(tmp_path / "member.backup"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        backed_up = orjson.loads(result.stdout)
        old_ids = {node.node_id() for node in old.nodes}
        old_cluster = old.leader().request("GET", "/cluster").json()["clusterId"]
    finally:
        old.kill()
    assert backed_up["changes"] == 30 and backed_up["clusterId"] == old_cluster

    new = Cluster(tmp_path / "new", 0)
    founder = ClusterNode("restored", tmp_path / "new" / "restored", free_port())
    joiner = ClusterNode("empty", tmp_path / "new" / "empty", free_port())
    new.nodes += [founder, joiner]
    result = run_cli("restore", "--from", str(tmp_path / "member.backup"), "-d",
                     str(founder.data_dir))  # fmt: skip
    assert result.returncode == 0, result.stderr
    try:
        new.start()
        assert founder.node_id() not in old_ids
        held = founder.get_changes(limit=1000).json()["changes"]
        assert [change["data"]["n"] for change in held] == list(range(30))
        new.form()  # the founder's own address first, then the empty node's
        cluster = founder.request("GET", "/cluster").json()
        assert cluster["clusterId"] not in ("0", old_cluster)
        assert sorted(cluster["roles"].values()) == ["voter", "voter"]
        written = joiner.post_change({"data": "through the new member"})
        assert written.status == 200 and written.json()["_id"] > held[-1]["_id"]
        new.wait_converged()
        founder_list, joiner_list = new.lists()
        assert founder_list == joiner_list == [*held, written.json()]
    finally:
        new.kill()
