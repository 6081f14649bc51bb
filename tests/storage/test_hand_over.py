"""The event loop hands the GIL to the writer thread it wakes (`write_queue.put` /
`HandOver`): the writer releases a batch's `taken` lock the moment it takes it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from changeagent.storage import Storage, StorageFailed, WriteBatch
from changeagent.storage.write_queue import (
    HAND_OVER_MEAN_WAITS,
    HAND_OVER_S_MAX,
    HAND_OVER_SKIP,
    HAND_OVER_SLOW_S,
    HandOver,
    Queued,
    WriteQueue,
)

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
    HandOver()(held)  # nobody releases it: returns after HAND_OVER_S_MAX
    assert HAND_OVER_S_MAX <= 0.01
    HandOver()(None)


class FakeLock:
    """Records the waits; the fake clock says how long each one took."""

    def __init__(self, clock: FakeClock, waits_s: float) -> None:
        self.clock, self.waits_s, self.timeouts = clock, waits_s, []

    def acquire(self, timeout: float) -> bool:
        self.timeouts.append(timeout)
        self.clock.now += self.waits_s
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_when_wake_ups_are_slow_the_next_hand_overs_are_skipped() -> None:
    """Busy CPUs (slow wake-ups on average): the loop stops idling through them for
    a while; an occasional slow one among quick ones does not."""
    clock = FakeClock()
    hand_over = HandOver(clock)
    quick = FakeLock(clock, HAND_OVER_SLOW_S / 4)
    slow = FakeLock(clock, HAND_OVER_SLOW_S * 2)
    for _ in range(50):
        hand_over(quick)  # type: ignore[arg-type]
    hand_over(slow)  # type: ignore[arg-type]  # one slow wake-up
    for _ in range(50):
        hand_over(quick)  # type: ignore[arg-type]
    assert len(quick.timeouts) == 100 and slow.timeouts == [HAND_OVER_S_MAX]
    calls = 0
    while len(slow.timeouts) == calls + 1:  # only slow ones now
        hand_over(slow)  # type: ignore[arg-type]
        calls += 1
        assert calls <= 2 * HAND_OVER_MEAN_WAITS, "slow wake-ups never stopped the hand-overs"
    # The last call was skipped: the mean had passed the limit one call before.
    waited = len(slow.timeouts)
    for _ in range(HAND_OVER_SKIP - 1):
        hand_over(slow)  # type: ignore[arg-type]
    assert len(slow.timeouts) == waited  # skipped
    hand_over(slow)  # type: ignore[arg-type]  # then it tries again, from a fresh mean
    assert len(slow.timeouts) == waited + 1


def test_a_loop_write_waits_for_the_writer_thread_to_take_its_batch(data_dir: Path) -> None:
    """Through `Storage.write` (the writer thread's path): every hand-over ends with
    the writer taking the batch, long before the limit."""
    outcomes: list[bool] = []

    def recording_hand_over(taken: threading.Lock | None) -> None:
        if taken is not None:
            outcomes.append(taken.acquire(timeout=2))

    def recording(storage: Storage) -> None:
        storage._hand_over = recording_hand_over  # type: ignore[assignment]

    async def main(storage: Storage) -> None:
        for index in range(1, 21):
            await storage.write(WriteBatch(entries=[change(index)]))

    with Storage.open(data_dir) as storage:
        recording(storage)
        asyncio.run(main(storage))
        assert storage.last_index() == 20
    assert outcomes and all(outcomes), outcomes
