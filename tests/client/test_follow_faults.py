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


END = "end"


class Reader:
    """follow() in a thread (Client, or AsyncClient on its own event loop), keeping
    what it yields and the server each came from (`server` is the latest), until it
    has `count` changes or one whose data is END."""

    def __init__(self, urls: list[str], tag: str, count: int, use_async: bool = False) -> None:
        self.seen: list[Change] = []
        self.servers: list[str] = []
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
                if self._keep(change, client.current_server):
                    return

    def _follow_async(self, urls: list[str], tag: str) -> None:
        async def follow() -> None:
            async with AsyncClient(urls, retry=RETRY) as client:
                async for change in client.follow(tags=[tag]):
                    if self._keep(change, client.current_server):
                        return

        asyncio.run(follow())

    def _keep(self, change: Change, server: str) -> bool:
        """Keep one change (and the server it came from); True when done."""
        self.servers.append(server)
        self.server = server
        self.seen.append(change)
        return len(self.seen) == self._count or change.data == END

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


class Writer:
    """Posts numbered changes, one at a time, until stopped; then posts END."""

    def __init__(self, urls: list[str], tag: str) -> None:
        self.posted: list[Change] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(urls, tag), daemon=True)
        self._thread.start()

    def _run(self, urls: list[str], tag: str) -> None:
        try:
            with Client(urls, retry=RETRY, timeout_s=10) as client:
                number = 0
                while not self._stop.wait(0.02):
                    self.posted.append(client.post(number, tags=[tag]))
                    number += 1
                self.posted.append(client.post(END, tags=[tag]))
        except BaseException as error:
            self.error = error

    def stop(self) -> list[Change]:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive() and self.error is None, self.error
        return self.posted


def test_follow_leaves_a_member_that_delivers_but_lags(proxied: ProxiedCluster) -> None:
    """The leader's messages reach one follower 600 ms late (below the election
    timeout, so it stays a follower): it goes on delivering every change, each
    600 ms after the others have it. Under steady writes, the lag check at its end
    once the member's trust (lag_check_s) has run out finds another member ahead,
    and follow() moves there."""
    tag = uuid.uuid4().hex
    leader = proxied.leader()
    behind = next(node for node in proxied.nodes if node is not leader)
    rest = [node for node in proxied.nodes if node is not behind]
    with Client(url(leader)) as client:
        before = [client.post(n, tags=[tag]) for n in range(3)]
    proxied.wait_converged()
    reader = Reader([url(behind), *(url(node) for node in rest)], tag, 0)
    # Its first lag check (at the first end it reached) is over once it long-polls
    # the member again; nothing was being written, so nobody was ahead.
    wait_until(lambda: reader.has(3) and behind.raft()["longPolls"] >= 1, 30, 0.02)
    assert reader.server == url(behind)
    proxied.proxy.delay(leader.name, behind.name, 600)
    writer = Writer([url(node) for node in rest], tag)
    try:
        wait_until(lambda: reader.has(4) and reader.server != url(behind), SWITCH_DEADLINE_S, 0.05)
    finally:
        posted = before + writer.stop()
    wait_until(lambda: reader.has(len(posted)), 30, 0.05)
    reader.thread.join(30)
    assert not reader.thread.is_alive() and reader.error is None
    assert reader.seen == posted  # in order, each once, across the switch
    # The member delivered changes written while it lagged before it was left.
    from_behind = reader.servers.count(url(behind))
    assert reader.servers[:from_behind] == [url(behind)] * from_behind
    assert from_behind > len(before)
    assert reader.servers[-1] in {url(node) for node in rest}
    print(f"\n600 ms behind: {from_behind} of {len(posted)} changes read there before leaving it")


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
