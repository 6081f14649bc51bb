"""The event loop hands the GIL to the writer thread it wakes (`write_queue.put` /
`hand_over`): the writer releases a batch's `taken` lock the moment it takes it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from changeagent.storage import Storage, StorageFailed, WriteBatch, store
from changeagent.storage.write_queue import HAND_OVER_S_MAX, Queued, WriteQueue, hand_over

from .conftest import change


def _queue() -> WriteQueue:
    return WriteQueue(batches_max=16, group_batches_max=16, group_bytes_max=1 << 20)


def _item(index: int) -> Queued:
    return Queued(WriteBatch(entries=[change(index)]))


def test_waking_an_idle_writer_gives_a_held_lock_that_taking_releases() -> None:
    queue = _queue()
    item = _item(1)
    taken = queue.put(item, 0.0)
    assert taken is not None and taken.locked()
    group: list[Queued] = []
    writer = threading.Thread(target=lambda: group.extend(queue.take_group()))
    writer.start()
    assert taken.acquire(timeout=5)  # released by the writer, not by a timeout
    writer.join(timeout=5)
    assert group == [item] and item.taken is None


def test_no_lock_when_the_writer_is_busy_or_the_queue_is_not_empty() -> None:
    queue = _queue()
    first = queue.put(_item(1), 0.0)
    assert first is not None
    assert queue.put(_item(2), 0.0) is None  # behind another batch: no idle writer woken
    group = queue.take_group()  # the writer now holds the connection (busy)
    assert len(group) == 2 and not first.locked()
    assert queue.put(_item(3), 0.0) is None  # taken after the group being written
    queue.release()


def test_a_failure_releases_a_waiting_submitter() -> None:
    queue = _queue()
    taken = queue.put(_item(1), 0.0)
    assert taken is not None
    queue.fail(StorageFailed("disk gone"))
    assert taken.acquire(blocking=False)


def test_hand_over_waits_at_most_its_limit() -> None:
    held = threading.Lock()
    held.acquire()
    hand_over(held)  # nobody releases it: returns after HAND_OVER_S_MAX
    assert HAND_OVER_S_MAX <= 0.01
    hand_over(None)


def test_a_loop_write_waits_for_the_writer_thread_to_take_its_batch(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `Storage.write` (the writer thread's path): every hand-over ends with
    the writer taking the batch, long before the limit."""
    outcomes: list[bool] = []

    def recording_hand_over(taken: threading.Lock | None) -> None:
        if taken is not None:
            outcomes.append(taken.acquire(timeout=2))

    monkeypatch.setattr(store, "hand_over", recording_hand_over)

    async def main(storage: Storage) -> None:
        for index in range(1, 21):
            await storage.write(WriteBatch(entries=[change(index)]))

    with Storage.open(data_dir) as storage:
        asyncio.run(main(storage))
        assert storage.last_index() == 20
    assert outcomes and all(outcomes), outcomes
