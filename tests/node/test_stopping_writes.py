"""What a lone voter tells a write it cannot answer because it is stopping or its
storage failed: the truth about whether the write was stored. Cancelling the Raft
driver's Ready loop does not withdraw a batch from the storage's writer thread, a
failed COMMIT may have reached the disk whole, and a stored write is committed
(the node is the only voter) and served once the node runs again."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from changeagent.change import parse_change_body
from changeagent.config import Settings
from changeagent.node import driver
from changeagent.node.errors import NotAvailable
from changeagent.node.node import Node, NodeLimits
from changeagent.node.replica import Replica
from changeagent.raft import Entry
from changeagent.storage import Storage
from changeagent.storage.writer import GroupTransaction
from tests.support.held_commits import HeldCommits

TIMEOUT_S = 10.0
BODY = b'{"data":"in flight"}'


async def started(storage: Storage) -> Node:
    node = Node(storage, Settings(), None, NodeLimits(), rng=random.Random(7))
    await node.start()
    return node


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not condition():
            await asyncio.sleep(0.005)


async def stop_with_write_held(
    node: Node, hold: Callable[[], Awaitable[None]], release: Callable[[], None]
) -> NotAvailable:
    """Start a write, hold it where `hold` says, close the node, then `release` it
    once the driver has stopped waiting for it; what the write was answered."""
    write = asyncio.ensure_future(node.append_change(parse_change_body(BODY), "key-1"))
    await hold()
    closing = asyncio.ensure_future(node.close())
    await until(lambda: node.replica.core_driver.stopped)
    release()
    with pytest.raises(NotAvailable) as raised:
        await write
    await closing
    return raised.value


def first_write_answer(
    data_dir: Path, arm: Callable[[], None], write: Callable[[Node], Awaitable[NotAvailable]]
) -> tuple[NotAvailable, int]:
    """On a fresh node: `arm` the fault, let `write` make the first change and say
    what it was answered; that answer, and the index the change had."""

    async def scenario() -> tuple[NotAvailable, int]:
        storage = Storage.open(data_dir)
        node = await started(storage)
        index = storage.last_index() + 1
        arm()
        try:
            return await write(node), index
        finally:
            storage.close()

    return asyncio.run(scenario())


def served_after_restart(data_dir: Path, index: int) -> dict[str, object]:
    async def scenario() -> dict[str, object]:
        storage = Storage.open(data_dir)
        node = await started(storage)
        try:
            await until(lambda: node.get_change(index) is not None)
            served = node.get_change(index)
            assert served is not None
            return dict(orjson.loads(served))
        finally:
            await node.close()
            storage.close()

    return asyncio.run(scenario())


def test_a_write_whose_commit_was_in_the_writer_thread_is_told_it_was_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = HeldCommits(tmp_path / "d", monkeypatch)

    async def scenario() -> tuple[NotAvailable, int]:
        node = await started(commits.storage)
        last_index = commits.storage.last_index()
        commits.hold()
        try:
            answer = await stop_with_write_held(node, commits.committing, commits.release)
        finally:
            commits.release()
            commits.storage.close()
        # Committed, only unanswered: not counted among the proposals that failed.
        assert node.replica.counters.proposals_failed == 0
        return answer, last_index + 1

    answer, index = asyncio.run(scenario())
    assert f"the write was stored as change {index}" in str(answer)
    assert "not stored" not in str(answer)
    assert served_after_restart(tmp_path / "d", index)["data"] == "in flight"


def test_a_write_stored_but_not_applied_when_the_node_stops_is_told_it_was_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applying = asyncio.Event()
    applied = asyncio.Event()
    hold = {"on": False}
    apply = Replica._apply

    async def held_apply(replica: Replica, entries: tuple[Entry, ...]) -> None:
        if hold["on"]:
            applying.set()
            await applied.wait()
        await apply(replica, entries)

    monkeypatch.setattr(Replica, "_apply", held_apply)

    def hold_applies() -> None:
        hold["on"] = True

    answer, index = first_write_answer(
        tmp_path / "d",
        hold_applies,
        lambda node: stop_with_write_held(node, applying.wait, applied.set),
    )
    assert f"the write was stored as change {index}" in str(answer)
    assert served_after_restart(tmp_path / "d", index)["data"] == "in flight"


def test_a_write_still_in_a_hung_writer_thread_is_told_it_may_have_been_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "SETTLE_S", 0.1)
    commits = HeldCommits(tmp_path / "d", monkeypatch)

    async def scenario() -> NotAvailable:
        node = await started(commits.storage)
        commits.hold()
        try:
            # Released only after the node gave up waiting for the disk.
            return await stop_with_write_held(node, commits.committing, lambda: None)
        finally:
            commits.release()
            commits.storage.close()

    answer = str(asyncio.run(scenario()))
    assert "the write may have been stored" in answer
    assert "Idempotency-Key" in answer


def test_a_write_whose_commit_failed_is_told_it_may_have_been_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync that fails after SQLite wrote the WAL frames: the frames may be on
    the disk whole, and the next open recovers the transaction (here they are)."""
    failing = {"on": False}
    commit = GroupTransaction.commit

    def failing_commit(transaction: GroupTransaction) -> None:
        commit(transaction)
        if failing["on"]:
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(GroupTransaction, "commit", failing_commit)

    def fail_commits() -> None:
        failing["on"] = True

    async def write(node: Node) -> NotAvailable:
        with pytest.raises(NotAvailable) as raised:
            await node.append_change(parse_change_body(BODY), "key-1")
        await node.close()
        return raised.value

    answer, index = first_write_answer(tmp_path / "d", fail_commits, write)
    assert "the write may have been stored" in str(answer)
    assert "not stored" not in str(answer)
    failing["on"] = False
    assert served_after_restart(tmp_path / "d", index)["data"] == "in flight"
