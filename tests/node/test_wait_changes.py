"""Long-poll wake-ups are never lost, even when a commit lands during a cold read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from changeagent.change import parse_change_body
from changeagent.config import Settings
from changeagent.node.node import Node, NodeLimits
from changeagent.node.query import ChangeQuery
from changeagent.storage import ChangePage, Storage

BLOCK_S = 600.0  # far longer than the test's own deadline: only a wake-up ends the wait
DEADLINE_S = 20.0


def test_commit_during_cold_read_still_wakes_the_poll(tmp_path: Path) -> None:
    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d", tail_cache_bytes=0)  # every read goes to SQLite
        node = Node(storage, Settings(), None, NodeLimits())
        await node.start()
        loop = asyncio.get_running_loop()
        original_read = storage.read_changes
        raced = []

        def read_while_a_change_commits(*args: Any, **kwargs: Any) -> ChangePage:
            page = original_read(*args, **kwargs)
            if not raced:  # first cold read: commit a change before answering
                raced.append(True)
                change = parse_change_body(b'{"data":"raced"}')
                asyncio.run_coroutine_threadsafe(node.append_change(change), loop).result(10)
            return page

        storage.read_changes = read_while_a_change_commits  # type: ignore[method-assign]
        try:
            # since=0 on a fresh node: nothing in memory can answer, the read goes to SQLite.
            page = await asyncio.wait_for(
                node.wait_changes(ChangeQuery(since=0), BLOCK_S), DEADLINE_S
            )
            assert raced and len(page.bodies) == 1 and b"raced" in page.bodies[0]
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())
