"""The driver's disk writes: one write at a time is committed on the event loop's
thread (no hand-off to the writer thread and back), and concurrent writes still
share commits on the writer thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from changeagent.change import parse_change_body
from changeagent.config import Settings
from changeagent.node.node import Node, NodeLimits
from changeagent.storage import Storage


def test_writes_one_at_a_time_are_committed_on_the_loop(tmp_path: Path) -> None:
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
