"""Idempotency keys on the leader: every wait is bounded, and a key is claimed
before the first await so that a concurrent retry never proposes it again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from changeagent.change import parse_change_body
from changeagent.config import Settings
from changeagent.node.errors import CommitTimeout
from changeagent.node.node import Node, NodeLimits
from changeagent.node.query import ChangeQuery
from changeagent.raft import Entry
from changeagent.storage import Storage

DEADLINE_S = 10.0  # far beyond the commit timeout: only a missing bound reaches it


def test_a_retry_of_a_key_whose_commit_never_comes_times_out(tmp_path: Path) -> None:
    """A deposed leader in an idle cluster may never see its proposal's index
    filled: the first attempt times out, and so must every retry (it once
    waited on the first attempt with no limit)."""

    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d")
        node = Node(storage, Settings(), None, NodeLimits(commit_timeout_s=0.2))
        await node.start()
        never: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        node.replica.propose = lambda *arguments: never  # type: ignore[method-assign]
        change = parse_change_body(b'{"data":"x"}')
        try:
            for _attempt in range(3):
                with pytest.raises(CommitTimeout, match="Idempotency-Key"):
                    await asyncio.wait_for(node.append_change(change, "k"), DEADLINE_S)
        finally:
            never.cancel()
            await node.close()
            storage.close()

    asyncio.run(scenario())


def test_concurrent_attempts_with_one_key_propose_once(tmp_path: Path) -> None:
    """A retry arriving while the first attempt waits (here: on a web hook)
    waits for that attempt and gets its answer; nothing is proposed twice."""

    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d")
        node = Node(storage, Settings(), None, NodeLimits(commit_timeout_s=5))
        await node.start()
        release = asyncio.Event()
        calls: list[str] = []

        async def slow_hooks(hooks: object, change: object) -> None:
            calls.append("hook")
            await release.wait()

        node.changes._web_hooks.validate = slow_hooks  # type: ignore[method-assign]
        change = parse_change_body(b'{"data":"once"}')
        try:
            first = asyncio.create_task(node.append_change(change, "key-1"))
            while not calls:
                await asyncio.sleep(0)
            second = asyncio.create_task(node.append_change(change, "key-1"))
            for _ in range(20):  # let the retry run as far as it can
                await asyncio.sleep(0)
            release.set()
            answers = await asyncio.wait_for(asyncio.gather(first, second), DEADLINE_S)
            assert answers[0] == answers[1]
            assert calls == ["hook"]
            page = await node.read_changes(ChangeQuery(since=0, limit=100))
            assert len(page.bodies) == 1
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())


def test_a_keyless_write_that_times_out_still_commits_and_the_node_goes_on(
    tmp_path: Path,
) -> None:
    """A write with no key that times out (CommitTimeout, "may still commit"): its
    entry still commits once proposed, and the node keeps writing."""

    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d")
        node = Node(storage, Settings(), None, NodeLimits(commit_timeout_s=0.2))
        await node.start()
        driver = node.replica.core_driver
        propose_queued = driver._propose_queued
        held = [True]
        driver._propose_queued = lambda: None if held[0] else propose_queued()  # type: ignore[method-assign]
        try:
            with pytest.raises(CommitTimeout, match="may still commit"):
                await asyncio.wait_for(
                    node.append_change(parse_change_body(b'{"data":"late"}')), DEADLINE_S
                )
            held[0] = False
            driver.wake()
            after = await asyncio.wait_for(
                node.append_change(parse_change_body(b'{"data":"next"}')), DEADLINE_S
            )
            page = await node.read_changes(ChangeQuery(since=0, limit=100))
            assert [orjson.loads(body)["data"] for body in page.bodies] == ["late", "next"]
            assert orjson.loads(after)["data"] == "next"
            assert driver.failure is None
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())
