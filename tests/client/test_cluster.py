"""Client against a real 3-member cluster: one idempotency key stores once through
any member, and posts keep succeeding, each stored exactly once, across kill -9 of
the leader."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from changeagent.client import Change, ChangeAgentError, Client, RetryPolicy
from tests.support.cluster import Cluster
from tests.support.server import wait_until

# Enough attempts to outlast an election; a short commit timeout so that a write
# forwarded to the dead leader is answered (503, then retried) within seconds.
FAILOVER_RETRY = RetryPolicy(attempts_max=40, backoff_initial_s=0.05, backoff_max_s=0.5)
COMMIT_TIMEOUT_S = 5


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, 3, ["--commit-timeout", str(COMMIT_TIMEOUT_S)])
    try:
        yield nodes.start().form()
    finally:
        nodes.kill()


def urls(cluster: Cluster) -> list[str]:
    return [f"http://127.0.0.1:{node.port}" for node in cluster.nodes]


def test_same_key_through_different_members_stores_once(cluster: Cluster) -> None:
    tag = uuid.uuid4().hex
    first_url, second_url, _ = urls(cluster)
    with Client(first_url) as first, Client(second_url) as second:
        posted = first.post({"x": 1}, tags=[tag], idempotency_key=tag)
        again = second.post({"x": 1}, tags=[tag], idempotency_key=tag)
        assert again.id == posted.id
        page = second.changes(tags=[tag], consistency="linearizable")
        assert [change.id for change in page.changes] == [posted.id]


class Poster(threading.Thread):
    """Posts 0, 1, 2, ... one after another until stopped; keeps what was acknowledged."""

    def __init__(self, client: Client, tag: str) -> None:
        super().__init__(daemon=True)
        self.client, self.tag = client, tag
        self.acknowledged: list[tuple[float, Change]] = []
        self.errors: list[ChangeAgentError] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.stopping.is_set():
            try:
                change = self.client.post({"n": number}, tags=[self.tag])
            except ChangeAgentError as error:
                self.errors.append(error)
                return
            self.acknowledged.append((time.monotonic(), change))
            number += 1


def test_posts_survive_kill_of_the_leader_each_stored_once(cluster: Cluster) -> None:
    tag = uuid.uuid4().hex
    with Client(urls(cluster), retry=FAILOVER_RETRY, timeout_s=COMMIT_TIMEOUT_S + 5) as client:
        poster = Poster(client, tag)
        poster.start()
        try:
            wait_until(lambda: len(poster.acknowledged) >= 20 or poster.errors, 30)
            cluster.leader().kill()
            killed_at = time.monotonic()
            after = lambda: sum(1 for at, _ in poster.acknowledged if at > killed_at)  # noqa: E731
            wait_until(lambda: after() >= 20 or poster.errors, 60)
        finally:
            poster.stopping.set()
            poster.join(60)
        assert not poster.errors and not poster.is_alive()
        stored = client.changes(limit=10_000, tags=[tag], consistency="linearizable").changes
    numbers = Counter(change.data["n"] for change in stored)
    assert all(count == 1 for count in numbers.values()), numbers.most_common(3)
    acknowledged = {change.id: change for _, change in poster.acknowledged}
    assert {change.id: change for change in stored if change.id in acknowledged} == acknowledged
    assert set(numbers) == {change.data["n"] for change in acknowledged.values()}
