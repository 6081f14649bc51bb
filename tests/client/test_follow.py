"""follow() against real processes: in order from a position, resumed from a
checkpoint, and across kill -9 of the member being read."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest

from changeagent.client import AsyncClient, Change, Client, RetryPolicy
from tests.support.cluster import Cluster
from tests.support.server import wait_until


def test_follow_yields_in_order_and_resumes_from_checkpoint(url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    checkpoint = str(tmp_path / "position")
    with Client(url) as client:
        posted = [client.post(n, tags=[tag]) for n in range(5)]
        first = client.follow(checkpoint=checkpoint, tags=[tag], block_s=1)
        assert [change.data for change in islice(first, 3)] == [0, 1, 2]
        first.close()  # the third was handed out, not yet acknowledged by asking again
        again = client.follow(checkpoint=checkpoint, tags=[tag], block_s=1)
        assert [change.id for change in islice(again, 3)] == [c.id for c in posted[2:]]
        again.close()


def test_async_follow_waits_for_new_changes(url: str) -> None:
    async def run() -> None:
        tag = uuid.uuid4().hex
        async with AsyncClient(url) as client:
            start = (await client.post("before", tags=[tag])).id

            async def take_two() -> list[Change]:
                taken: list[Change] = []
                async for change in client.follow(start, tags=[tag], block_s=5):
                    taken.append(change)
                    if len(taken) == 2:
                        return taken
                return taken

            reader = asyncio.create_task(take_two())
            later = [await client.post(n, tags=[tag]) for n in range(2)]
            assert await asyncio.wait_for(reader, 30) == later

    asyncio.run(run())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, 3, ["--commit-timeout", "5"])
    try:
        yield nodes.start().form()
    finally:
        nodes.kill()


def test_follow_moves_on_when_the_member_read_is_killed(cluster: Cluster) -> None:
    tag = uuid.uuid4().hex
    read_first = cluster.followers()[0]
    order = [read_first, *(node for node in cluster.nodes if node is not read_first)]
    urls = [f"http://127.0.0.1:{node.port}" for node in order]
    retry = RetryPolicy(attempts_max=40, backoff_initial_s=0.05, backoff_max_s=0.5)
    seen: list[Change] = []

    def follow() -> None:
        with Client(urls, retry=retry) as reader:
            for change in reader.follow(tags=[tag], block_s=1):
                seen.append(change)
                if len(seen) == 20:
                    return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    with Client(urls[1:], retry=retry, timeout_s=10) as writer:
        posted = [writer.post(n, tags=[tag]) for n in range(10)]
        wait_until(lambda: len(seen) >= 10, 30)
        read_first.kill()
        posted += [writer.post(n, tags=[tag]) for n in range(10, 20)]
    thread.join(60)
    assert not thread.is_alive()
    assert [change.id for change in seen] == [change.id for change in posted]


def test_follow_pages_stops_at_the_end_when_asked(url: str) -> None:
    tag = uuid.uuid4().hex
    with Client(url) as client:
        posted = [client.post(n, tags=[tag]) for n in range(5)]
        batches = list(client.follow_pages(tags=[tag], limit=2, stop_at_end=True))
        assert [len(batch) for batch in batches] == [2, 2, 1]
        assert [change for batch in batches for change in batch] == posted
        assert list(client.follow(posted[-1].id, tags=[tag], stop_at_end=True)) == []
        assert client.last_index() >= posted[-1].id
