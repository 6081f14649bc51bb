"""A purge removes at most `purge_entries_max` log entries at a time: compacting
holds the writer thread, so every write of the node waits behind it (~0.2 s per
100,000 entries). A larger backlog goes in steps, one per purge check, up to the
point the purge rule allows, and no further."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

from changeagent.change import parse_change_body
from changeagent.config import Settings
from changeagent.node.limits import NodeLimits
from changeagent.node.node import Node
from changeagent.storage import Storage

STEP = 4
KEPT = 2  # minPurgeRecords


async def purged_after_a_check(node: Node) -> int:
    """Run one purge check and wait for its compaction; the snapshot index after."""
    before = node.storage.snapshot().index
    await node.replica._propose_purge()
    deadline = time.monotonic() + 10
    while node.storage.snapshot().index == before:
        if node.replica.replicated.purge_index <= before:
            return before  # nothing was proposed
        assert time.monotonic() < deadline, "the purge was not compacted in time"
        await asyncio.sleep(0.005)
    return node.storage.snapshot().index


def test_a_purge_backlog_is_removed_in_bounded_steps(tmp_path: Path) -> None:
    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d")
        settings = Settings(min_purge_records=KEPT, min_purge_duration_ns=1)
        # Checks only when the test runs one.
        limits = NodeLimits(purge_interval_s=3600, purge_entries_max=STEP)
        node = Node(storage, settings, None, limits, rng=random.Random(7))
        await node.start()
        try:
            ids = []
            for number in range(14):
                stored = await node.append_change(parse_change_body(b'{"data":%d}' % number))
                ids.append(int(stored.split(b'"_id":')[1].split(b",")[0]))
            points = [storage.snapshot().index]
            while (point := await purged_after_a_check(node)) != points[-1]:
                points.append(point)
                assert len(points) < 20
            steps = [after - before for before, after in itertools.pairwise(points)]
            assert all(0 < step <= STEP for step in steps), points
            assert steps.count(STEP) >= 3, points  # a backlog of 14: several full steps
            # The last point is the purge rule's: the newest KEPT changes stay.
            assert points[-1] == ids[-KEPT - 1], (points, ids)
            remaining = storage.entries(points[-1] + 1, storage.last_index() + 1, 1 << 20)
            assert [entry.index for entry in remaining if entry.index in ids] == ids[-KEPT:]
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())
