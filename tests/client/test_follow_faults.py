"""follow() against real processes under faults: a member that still answers HTTP
but falls behind (its peer links cut by a LinkProxy), and a real purge gap."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import pytest

from changeagent.client import (
    AsyncClient,
    Change,
    ChangesMissed,
    Client,
    RetryPolicy,
)
from changeagent.client.core import LAG_CHECK_S
from tests.cluster.harness import ProxiedCluster, proxied_cluster
from tests.support.cluster import ClusterNode
from tests.support.server import ServerProcess, wait_until

RETRY = RetryPolicy(attempts_max=40, backoff_initial_s=0.05, backoff_max_s=0.5)
# A follower on a quiet member asks again after at most LAG_CHECK_S, then probes the
# others (each at most max(1 s, LAG_CHECK_S)); the rest is slack for a loaded machine.
SWITCH_DEADLINE_S = 3 * LAG_CHECK_S + 10


def url(node: ClusterNode) -> str:
    return f"http://127.0.0.1:{node.port}"


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[ProxiedCluster]:
    """Three members whose peer links pass through a LinkProxy; killed by pid after."""
    with proxied_cluster(tmp_path, 3) as cluster:
        yield cluster


class Reader:
    """follow() in a thread (Client, or AsyncClient on its own event loop), keeping
    what it yields and the server it reads from, until it has `count` changes."""

    def __init__(self, urls: list[str], tag: str, count: int, use_async: bool) -> None:
        self.seen: list[Change] = []
        self.server = ""
        self.error: BaseException | None = None
        self._count = count
        target = self._follow_async if use_async else self._follow
        self.thread = threading.Thread(target=self._guarded, args=(target, urls, tag), daemon=True)
        self.thread.start()

    def _guarded(self, target: Callable[[list[str], str], None], urls: list[str], tag: str) -> None:
        try:
            target(urls, tag)
        except BaseException as error:
            self.error = error

    def _follow(self, urls: list[str], tag: str) -> None:
        with Client(urls, retry=RETRY) as client:
            for change in client.follow(tags=[tag]):
                self.seen.append(change)
                self.server = client.current_server
                if len(self.seen) == self._count:
                    return

    def _follow_async(self, urls: list[str], tag: str) -> None:
        async def follow() -> None:
            async with AsyncClient(urls, retry=RETRY) as client:
                async for change in client.follow(tags=[tag]):
                    self.seen.append(change)
                    self.server = client.current_server
                    if len(self.seen) == self._count:
                        return

        asyncio.run(follow())

    def has(self, count: int) -> bool:
        assert self.error is None, self.error
        return len(self.seen) >= count


def test_follow_leaves_a_member_that_answers_but_falls_behind(proxied: ProxiedCluster) -> None:
    tag = uuid.uuid4().hex
    leader = proxied.leader()
    behind = next(node for node in proxied.nodes if node is not leader)
    rest = [node for node in proxied.nodes if node is not behind]
    with Client([url(node) for node in rest], retry=RETRY, timeout_s=10) as writer:
        posted = [writer.post(n, tags=[tag]) for n in range(5)]
        proxied.wait_converged()
        # Both shells start on the member about to be cut off. Nothing is written until
        # it is: until then no member is ahead of it, so neither can have left it.
        urls = [url(behind), *(url(node) for node in rest)]
        readers = [Reader(urls, tag, 20, use_async) for use_async in (False, True)]
        wait_until(lambda: all(reader.has(5) for reader in readers), 30)
        assert {reader.server for reader in readers} == {url(behind)}
        proxied.proxy.isolate(behind.name, proxied.names)
        proxied.leader(among=rest)
        posted += [writer.post(n, tags=[tag]) for n in range(5, 20)]
        written_at = time.monotonic()
        wait_until(lambda: all(reader.has(20) for reader in readers), SWITCH_DEADLINE_S, 0.05)
        delivered_s = time.monotonic() - written_at
    for reader in readers:
        reader.thread.join(30)
        assert not reader.thread.is_alive()
        assert [change.id for change in reader.seen] == [change.id for change in posted]
        assert reader.seen == posted
        assert reader.server in {url(node) for node in rest}
    # The premise held throughout: the member kept answering, without the new changes.
    answer = behind.get_changes(since=posted[4].id, tag=tag)
    assert answer.status == 200 and answer.json()["changes"] == []
    assert behind.raft()["appliedIndex"] < posted[5].id
    print(f"\nlagging member left: all 15 delivered {delivered_s:.1f} s after the last write")


@pytest.fixture
def purging(tmp_path: Path) -> Iterator[str]:
    """One node that checks its purge rule every 50 ms; killed by pid after."""
    node = ServerProcess(tmp_path / "data", ["--purge-interval", "0.05"]).start()
    try:
        yield f"http://127.0.0.1:{node.port}"
    finally:
        node.kill()


def test_a_purge_gap_raises_changes_missed_or_is_skipped(purging: str) -> None:
    tag = uuid.uuid4().hex
    with Client(purging) as client:
        posted = [client.post(n, tags=[tag]) for n in range(10)]
        reader = client.follow(tags=[tag], limit=2, block_s=1)
        assert [next(reader), next(reader)] == posted[:2]  # the consumer holds the second
        client.set_config("minPurgeRecords: 4\nminPurgeDuration: 1ms\n")
        wait_until(lambda: client.changes(tags=[tag]).missed, 20, 0.05)
        # Purge keeps the newest 4 changes: stable until the next post.
        retained = list(client.changes(tags=[tag]).changes)
        # A real gap: changes after the consumer's position it never saw are gone.
        assert retained and posted[2] not in retained
        assert retained == posted[len(posted) - len(retained) :]
        with pytest.raises(ChangesMissed) as raised:
            next(reader)
        gap = raised.value
        assert gap.since == posted[1].id
        assert gap.first_retained is not None
        assert posted[2].id < gap.first_retained <= retained[0].id
        to_end = client.follow(posted[1].id, tags=[tag], stop_at_end=True, skip_missed=True)
        assert list(to_end) == retained

        async def follow_async() -> int | None:
            async with AsyncClient(purging) as asynchronous:
                with pytest.raises(ChangesMissed) as raised:
                    async for _ in asynchronous.follow(posted[1].id, tags=[tag], block_s=1):
                        pass
                return raised.value.first_retained

        assert asyncio.run(follow_async()) == gap.first_retained
        # skip_missed goes on from the first retained change, then waits for more.
        skipping = client.follow(posted[1].id, tags=[tag], skip_missed=True, block_s=1)
        assert list(islice(skipping, len(retained))) == retained
        later = client.post("after the gap", tags=[tag])
        assert next(skipping) == later
        skipping.close()
