"""Graceful shutdown of cluster members: SIGTERM ends a member promptly (exit 0)
whichever order the members are stopped in, on both peer carriers. Peers on the
API port are WebSocket requests there; shutdown must not wait for them as it
waits for clients' requests (they stay open as long as the other member lives)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, ClusterNode

# Idle members: no client request is in flight, so nothing justifies waiting
# anywhere near the 60 s grace for in-flight requests. A leader may spend up to
# two election timeouts (2 s) handing leadership over first.
PROMPT_EXIT_S = 8.0


def stop_together(nodes: list[ClusterNode]) -> dict[str, float]:
    """SIGTERM every node at once; seconds until each exited with status 0."""
    started = time.monotonic()
    for node in nodes:
        assert node.server is not None and node.server.process is not None
        node.server.process.send_signal(signal.SIGTERM)
    took = {}
    for node in nodes:
        assert node.server is not None and node.server.process is not None
        # Wait without signalling again (a second SIGTERM may end it at once).
        assert node.server.process.wait(70) == 0, node.name
        took[node.name] = time.monotonic() - started
    return took


@pytest.mark.parametrize("carrier", ["api-port", "cluster-port"])
@pytest.mark.parametrize("order", ["together", "followers first", "leader first"])
def test_sigterm_ends_every_member_promptly(tmp_path: Path, carrier: str, order: str) -> None:
    cluster = Cluster(tmp_path, 3, use_cluster_port=carrier == "cluster-port").start().form()
    try:
        leader = cluster.leader()
        followers = [node for node in cluster.nodes if node is not leader]
        assert leader.post_change({"data": "before shutdown"}).status == 200
        if order == "together":
            took = stop_together(cluster.nodes)
        elif order == "followers first":
            took = stop_together(followers) | stop_together([leader])
        else:
            took = stop_together([leader]) | stop_together(followers)
        print(f"\n{carrier}, {order}: " + ", ".join(f"{k} {v:.2f} s" for k, v in took.items()))
        slow = {name: seconds for name, seconds in took.items() if seconds > PROMPT_EXIT_S}
        assert not slow, f"members took too long to stop: {took}"
    finally:
        cluster.kill()
