"""`archiveDir` is a replicated setting: set once through /config, every member of a
3-member cluster archives what purges remove into its own directory, each holding
every purged change exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.cli.support import run_cli
from tests.support.cluster import Cluster
from tests.support.server import wait_until

KEEP = 20


def test_every_member_archives_its_own_copy(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, extra_arguments=["--purge-interval", "0.05"]).start()
    try:
        cluster.form()
        leader = cluster.leader()
        follower = cluster.followers()[0]
        settings = f"minPurgeRecords: {KEEP}\nminPurgeDuration: 1ms\narchiveDir: archive\n"
        answer = follower.request(  # through a follower: forwarded, replicated
            "PUT", "/config", settings, {"Content-Type": "application/yaml"}
        )
        assert answer.status == 200, answer.body
        written: list[dict[str, Any]] = []
        for number in range(300):
            via = cluster.nodes[number % 3]
            posted = via.post_change({"data": {"n": number}})
            assert posted.status == 200, posted.body
            written.append(posted.json())

        def purged_everywhere() -> bool:
            return all(
                len(node.get_changes(limit=1000).json()["changes"]) == KEEP
                for node in cluster.nodes
            )

        wait_until(purged_everywhere, timeout_s=60)
        for node in cluster.nodes:
            result = run_cli("archive", "cat", str(node.data_dir / "archive"))
            assert result.returncode == 0, result.stderr
            in_archive = [orjson.loads(line) for line in result.stdout.splitlines()]
            kept = node.get_changes(limit=1000).json()["changes"]
            assert in_archive + kept == written, node.name
        assert leader.request("GET", "/config").text.count("archiveDir: archive") == 1
    finally:
        cluster.kill()
