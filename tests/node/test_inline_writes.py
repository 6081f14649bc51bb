"""The driver's disk writes: one write at a time is committed on the event loop's
thread (no hand-off to the writer thread and back), and concurrent writes still
share commits on the writer thread. A lone writer's proposal is handled in the
`propose` call itself, and proposals that arrive together still make one batch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from changeagent.change import parse_change_body
from changeagent.config import Settings
from changeagent.node.errors import NotAvailable
from changeagent.node.node import Node, NodeLimits
from changeagent.storage import Storage
from tests.support.disk import inline_whatever_the_disk
from tests.support.node import run_with_node


def test_writes_one_at_a_time_are_committed_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline_whatever_the_disk(monkeypatch)
    threads: list[int] = []

    async def scenario() -> None:
        storage = Storage.open(
            tmp_path / "d", fault_injector=lambda _: threads.append(threading.get_ident())
        )
        node = Node(storage, Settings(), None, NodeLimits())
        await node.start()
        try:
            loop_thread = threading.get_ident()
            for number in range(20):
                await node.append_change(parse_change_body(b'{"data":%d}' % number))
            assert threads[-10:] == [loop_thread] * 10
            commits = len(threads)
            await asyncio.gather(
                *(
                    node.append_change(parse_change_body(b'{"data":%d}' % number))
                    for number in range(50)
                )
            )
            concurrent = threads[commits:]
            assert len(concurrent) < 25, "concurrent writes must share commits"
            assert any(thread != loop_thread for thread in concurrent)
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())


def test_a_lone_writers_proposal_is_written_and_applied_in_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline_whatever_the_disk(monkeypatch)

    async def body(node: Node) -> None:
        driver = node.replica.core_driver
        await node.append_change(parse_change_body(b'{"data":"first"}'))
        for _ in range(3):
            await asyncio.sleep(0)  # a writer's next request comes in a later iteration
            last_index = driver.core.last_index
            written = driver.propose(0, lambda index: b"{}")
            # Not one loop iteration later in the Ready loop: proposed, written
            # inline and, this node being the only voter, applied before the return.
            assert driver.core.last_index == last_index + 1
            assert written.done() and written.result().index == last_index + 1

    run_with_node(tmp_path, body)


def test_proposals_arriving_together_make_one_batch(tmp_path: Path) -> None:
    entries_per_commit: list[int] = []

    async def body(node: Node) -> None:
        node.storage.commit_observer = lambda _seconds, entries: entries_per_commit.append(entries)

        def together() -> list[Coroutine[Any, Any, bytes]]:
            return [
                node.append_change(parse_change_body(b'{"data":%d}' % number))
                for number in range(50)
            ]

        counters = node.replica.counters
        await node.append_change(parse_change_body(b'{"data":"alone"}'))
        at_once = counters.proposals_at_once
        entries_per_commit.clear()
        await asyncio.gather(*together())
        # The first went at once (a lone writer's, as far as anyone could tell);
        # the 49 behind it, proposed while it was handled, in one batch.
        assert entries_per_commit == [1, 49]
        assert counters.proposals_at_once == at_once + 1
        for _ in range(3):
            entries_per_commit.clear()
            await asyncio.gather(*together())
            # Batches of many lately: all 50 wait for the Ready loop, together.
            assert entries_per_commit == [50]
        for _ in range(3):  # and a few lone writes after them still do
            await asyncio.sleep(0)
            await node.append_change(parse_change_body(b'{"data":"alone"}'))
        assert counters.proposals_at_once == at_once + 1

    run_with_node(tmp_path, body)


def test_a_failure_while_a_proposal_is_handled_in_the_call_fails_the_node(
    tmp_path: Path,
) -> None:
    failing = {"on": False}

    def inject(commit_number: int) -> None:
        if failing["on"]:
            raise OSError("injected: the disk failed")

    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d", fault_injector=inject)
        node = Node(storage, Settings(), None, NodeLimits())
        await node.start()
        try:
            driver = node.replica.core_driver
            failing["on"] = True
            written = driver.propose(0, lambda index: b"{}")  # raises nothing here
            with pytest.raises(NotAvailable, match="not stored"):
                await asyncio.wait_for(written, 10)
            assert driver.failure is not None and "injected" in driver.failure
            assert node.replica.failure is not None
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())
