"""A leader whose write is slow (a large change, a purge's compaction, a slow disk)
keeps heartbeating: the ticker sends what may leave before anything is persisted
while the Ready loop waits (`RaftNode.take_messages`), so the followers do not time
out and elect another leader meanwhile. Before, a leader sent nothing from the
start of such a write to its end (a 20 MiB change on a slow disk cost an election
in CI)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from changeagent.node.driver import RaftDriver
from changeagent.raft import Entry, Message, MessageType, RaftConfig, Role
from changeagent.raft.interfaces import Membership, Snapshot
from changeagent.storage import Storage, WriteBatch, store
from tests.node.test_step_ready import wait_for
from tests.support.driver import recording_hooks

VOTERS = frozenset({1, 2, 3})


class HoldWriterCommits:
    """A fault injector that, once armed, holds every COMMIT made off the event
    loop's thread until released (inline writes, on the loop, go through)."""

    def __init__(self) -> None:
        self.loop_thread = threading.get_ident()
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, commit_number: int) -> None:
        if not self.armed or threading.get_ident() == self.loop_thread:
            return
        self.entered.set()
        if not self.release.wait(timeout=30):
            raise TimeoutError("the test never released the write")


def heartbeats_to(sent: list[Message], peer: int) -> int:
    return sum(1 for m in sent if m.type is MessageType.HEARTBEAT and m.target == peer)


Scenario = Callable[[RaftDriver, Storage, list[Message]], Awaitable[None]]


def run_leader(
    tmp_path: Path,
    scenario: Scenario,
    held: HoldWriterCommits | None = None,
    after_advance: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """`scenario` with node 1 elected leader of three voters (a heartbeat every
    0.01 s tick; no election or quorum sweep within a test)."""
    sent: list[Message] = []

    def spawn(coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return asyncio.ensure_future(coroutine)

    async def run() -> None:
        storage = Storage.open(tmp_path / "d", fault_injector=held)
        await storage.write(WriteBatch(snapshot=Snapshot(membership=Membership(VOTERS))))
        hooks = recording_hooks(sent)
        if after_advance is not None:
            hooks = dataclasses.replace(hooks, after_advance=after_advance)
        config = RaftConfig(node_id=1, election_ticks=1000, heartbeat_ticks=1)
        driver = RaftDriver(
            storage, config, 0.01, hooks, applied=0, pending_max=10, rng=random.Random(1)
        )
        try:
            driver.start(spawn)
            driver.campaign()
            await wait_for(lambda: any(m.type is MessageType.VOTE for m in sent))
            driver.step(Message(MessageType.VOTE_RESPONSE, 2, 1, driver.core.term))
            await wait_for(lambda: driver.core.role is Role.LEADER)
            await scenario(driver, storage, sent)
        finally:
            if held is not None:
                held.release.set()
            await driver.stop()
            storage.close()

    asyncio.run(run())


async def heartbeats_go_on(sent: list[Message]) -> None:
    """Three more heartbeats to each follower from now."""
    before = heartbeats_to(sent, 2), heartbeats_to(sent, 3)
    await wait_for(
        lambda: heartbeats_to(sent, 2) >= before[0] + 3 and heartbeats_to(sent, 3) >= before[1] + 3
    )


def test_a_leader_heartbeats_while_its_write_waits_for_the_disk(tmp_path: Path) -> None:
    held = HoldWriterCommits()

    async def scenario(driver: RaftDriver, storage: Storage, sent: list[Message]) -> None:
        # A change too large to be written on the loop goes to the writer thread,
        # which holds its COMMIT: the Ready loop waits for it.
        body = b'{"data":"%s"}' % (b"x" * store.WRITE_NOW_BYTES_MAX)
        # The term's first entry durable first: on a slow disk its write may go to
        # the writer thread too, and holding it instead left this one unproposed.
        await wait_for(lambda: storage.last_index() == driver.core.last_index)
        index = driver.core.last_index + 1
        held.armed = True
        written = driver.propose(0, lambda index: body)
        assert await asyncio.to_thread(held.entered.wait, 30)
        await heartbeats_go_on(sent)
        assert not written.done()
        assert storage.last_index() < index, "still being written"
        held.release.set()
        # Durable on the leader; committed once a follower holds it too.
        await wait_for(lambda: storage.last_index() == index)
        driver.step(Message(MessageType.APPEND_RESPONSE, 2, 1, driver.core.term, index=index))
        entry: Entry = await asyncio.wait_for(written, 10)
        assert (entry.index, entry.data) == (index, body)

    run_leader(tmp_path, scenario, held=held)


def test_a_leader_heartbeats_while_the_step_after_a_ready_waits(tmp_path: Path) -> None:
    """The after-advance step, where a purge's compaction writes (one DELETE of
    every purged row, then an fsync), held: no Ready is taken meanwhile."""
    entered = asyncio.Event()
    release = asyncio.Event()
    hold_after: Storage | None = None  # hold once this storage holds `index`
    index = 0

    async def after_advance() -> None:
        # Only after the Ready that wrote the proposal (on a slow disk a Ready of
        # heartbeats alone may be advanced while that write is still going on).
        if hold_after is not None and hold_after.last_index() >= index:
            entered.set()
            await release.wait()

    async def scenario(driver: RaftDriver, storage: Storage, sent: list[Message]) -> None:
        nonlocal hold_after, index
        index = driver.core.last_index + 1
        hold_after = storage
        written = driver.propose(0, lambda index: b"{}")
        await asyncio.wait_for(entered.wait(), 10)
        assert storage.last_index() == index
        await heartbeats_go_on(sent)
        hold_after = None
        release.set()
        driver.step(Message(MessageType.APPEND_RESPONSE, 2, 1, driver.core.term, index=index))
        assert (await asyncio.wait_for(written, 10)).index == index

    run_leader(tmp_path, scenario, after_advance=after_advance)
