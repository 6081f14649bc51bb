"""An in-process standalone node for node-level tests."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from changeagent.config import Settings
from changeagent.node.node import Node, NodeLimits
from changeagent.storage import Storage


def run_with_node(tmp_path: Path, body: Callable[[Node], Awaitable[None]]) -> None:
    """Start a node on a fresh data dir under `tmp_path`, run `body(node)`, close it."""

    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d")
        node = Node(storage, Settings(), None, NodeLimits(), rng=random.Random(7))
        await node.start()
        try:
            await body(node)
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())
