"""Fail-stop at the runtime edge: an exception in any long-lived task (or in our
handling of a peer's message) fails the whole node, once and loudly: Raft stops,
writes answer 503 naming the reason, the error is logged once with its
traceback. Never a silent dead task."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from changeagent.change import parse_change_body
from changeagent.config import SECOND_NS, Settings
from changeagent.node.errors import NotAvailable
from changeagent.node.node import Node, NodeLimits
from changeagent.node.replicated_state import RemovedSelf
from changeagent.node.settings_entry import encode_purge
from changeagent.raft import ENTRY_TYPE_PURGE, Message, MessageType
from changeagent.storage import Storage

DEADLINE_S = 10.0


class Injected(RuntimeError):
    """The exception planted in a task."""


def _raise(*arguments: Any, **keywords: Any) -> Any:
    raise Injected("planted by the test")


async def _plant_in_ticker(node: Node) -> None:
    node.replica.core_driver.core.tick = _raise  # type: ignore[method-assign]


async def _plant_in_ready_loop(node: Node) -> None:
    core = node.replica.core_driver.core
    core.has_ready = lambda: True  # type: ignore[method-assign]
    core.ready = _raise  # type: ignore[method-assign]
    node.replica.core_driver.wake()


async def _plant_in_purge(node: Node) -> None:
    node.replica._propose_purge = _raise  # type: ignore[method-assign]


async def _plant_in_promote(node: Node) -> None:
    node.cluster._promote_caught_up = _raise  # type: ignore[method-assign]


async def _plant_in_peer_message(node: Node) -> None:
    node.replica.core_driver.step = _raise  # type: ignore[method-assign]
    node.on_peer_message(2, Message(MessageType.HEARTBEAT, 2, node.node_id, node.status().term))


async def _plant_in_leave(node: Node) -> None:
    async def leave() -> None:
        raise Injected("planted by the test")

    node.replica.set_leave_handler(leave)
    await node.replica._execute([RemovedSelf()])


PLANTS: dict[str, tuple[Callable[[Node], Any], str]] = {
    "ticker": (_plant_in_ticker, "task raft-tick"),
    "ready loop": (_plant_in_ready_loop, "task raft-ready"),
    "purge": (_plant_in_purge, "task purge"),
    "promote": (_plant_in_promote, "task promote"),
    "peer message": (_plant_in_peer_message, "handling a message from node 2"),
    "leave": (_plant_in_leave, "task leave-cluster"),
}


@pytest.mark.parametrize("task", sorted(PLANTS))
def test_an_exception_in_a_task_fails_the_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, task: str
) -> None:
    plant, where = PLANTS[task]

    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d")
        settings = Settings(heartbeat_timeout_ns=SECOND_NS // 100, election_timeout_ns=SECOND_NS)
        node = Node(storage, settings, None, NodeLimits(purge_interval_s=0.01))
        await node.start()
        try:
            change = parse_change_body(b'{"data":"before"}')
            await node.append_change(change)
            with caplog.at_level(logging.ERROR):
                await plant(node)
                async with asyncio.timeout(DEADLINE_S):
                    while node.failure is None:
                        await asyncio.sleep(0.005)
                assert node.failure.startswith(where), node.failure
                assert "Injected" in node.failure
                assert node.replica.core_driver.stopped, "Raft must stop"
                with pytest.raises(NotAvailable, match="planted by the test"):
                    await node.append_change(parse_change_body(b'{"data":"after"}'))
            failures = [r for r in caplog.records if "failing stop" in r.getMessage()]
            assert len(failures) == 1 and failures[0].exc_info is not None
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())


def test_a_purge_that_cannot_be_written_fails_the_whole_node(tmp_path: Path) -> None:
    """A leader whose compaction write fails used to keep heartbeating (so no
    other member took over) while refusing every write. Now Raft stops."""
    commits: list[int] = []
    fail_at: list[int] = []

    def injector(commit_number: int) -> None:
        commits.append(commit_number)
        if fail_at and commit_number >= fail_at[0]:
            raise OSError(5, "Input/output error (injected)")

    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d", fault_injector=injector)
        node = Node(storage, Settings(), None, NodeLimits())
        await node.start()
        try:
            for number in range(5):
                await node.append_change(parse_change_body(b'{"data":%d}' % number))
            # The purge entry's own write succeeds; the compaction after it fails.
            fail_at.append(commits[-1] + 2)
            await node.replica.propose_internal(ENTRY_TYPE_PURGE, encode_purge(4))
            async with asyncio.timeout(DEADLINE_S):
                while node.failure is None:
                    await asyncio.sleep(0.005)
            assert "purge to 4" in node.failure
            assert node.replica.core_driver.stopped, "a leader that cannot write must stop leading"
            with pytest.raises(NotAvailable, match="purge to 4"):
                await node.append_change(parse_change_body(b'{"data":"after"}'))
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())
