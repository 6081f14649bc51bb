"""Group commit: batches queued while a commit runs share the next one."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from changeagent.storage import Storage, WriteBatch

from .conftest import change


class CommitGate:
    """A fault injector that holds the first commit until released (no sleeps)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, commit_number: int) -> None:
        if commit_number == 1:
            self.entered.set()
            if not self.release.wait(timeout=30):
                raise TimeoutError("test gate was never released")


def test_batches_queued_during_a_commit_share_one_commit(data_dir: Path) -> None:
    gate = CommitGate()
    with Storage.open(data_dir, fault_injector=gate) as storage:
        first = storage.submit(WriteBatch(entries=[change(1)]))
        assert gate.entered.wait(timeout=30)
        rest = [storage.submit(WriteBatch(entries=[change(index)])) for index in range(2, 102)]
        assert not any(future.done() for future in rest)  # nothing acknowledged early
        gate.release.set()
        for future in [first, *rest]:
            future.result(timeout=30)
        assert storage.commit_count == 2
        assert storage.batches_written == 101
        assert storage.last_index() == 101


def test_group_size_is_bounded(data_dir: Path) -> None:
    gate = CommitGate()
    with Storage.open(data_dir, fault_injector=gate, group_batches_max=10) as storage:
        first = storage.submit(WriteBatch(entries=[change(1)]))
        assert gate.entered.wait(timeout=30)
        rest = [storage.submit(WriteBatch(entries=[change(index)])) for index in range(2, 42)]
        gate.release.set()
        for future in [first, *rest]:
            future.result(timeout=30)
        assert storage.commit_count == 1 + 4


def test_concurrent_threads_are_grouped(data_dir: Path) -> None:
    gate = CommitGate()
    with Storage.open(data_dir, fault_injector=gate) as storage:
        storage.submit(WriteBatch(entries=[change(1)]))
        assert gate.entered.wait(timeout=30)
        lock = threading.Lock()
        next_index = [2]

        def submitter() -> None:
            for _ in range(25):
                with lock:  # entries must arrive in index order
                    index = next_index[0]
                    next_index[0] += 1
                    future = storage.submit(WriteBatch(entries=[change(index)]))
                future.result(timeout=30)

        threads = [threading.Thread(target=submitter) for _ in range(8)]
        for thread in threads:
            thread.start()
        gate.release.set()
        for thread in threads:
            thread.join(timeout=30)
        assert storage.last_index() == 201
        # Each submitter waits for its own write before the next: at most one
        # commit per round of 8, far fewer than 200.
        assert storage.commit_count <= 1 + 200 // 2


def test_async_write_waits_for_durability(data_dir: Path) -> None:
    async def main(storage: Storage) -> None:
        await asyncio.gather(
            *(storage.write(WriteBatch(entries=[change(index)])) for index in range(1, 65))
        )

    with Storage.open(data_dir) as storage:
        asyncio.run(main(storage))
        assert storage.last_index() == 64
        assert storage.commit_count < 64


def test_full_queue_back_pressure(data_dir: Path) -> None:
    from changeagent.storage import StorageBusy

    gate = CommitGate()
    with Storage.open(data_dir, fault_injector=gate, queue_batches_max=2) as storage:
        storage.submit(WriteBatch(entries=[change(1)]))
        assert gate.entered.wait(timeout=30)
        storage.submit(WriteBatch(entries=[change(2)]))
        storage.submit(WriteBatch(entries=[change(3)]))
        try:
            storage.submit(WriteBatch(entries=[change(4)]))
        except StorageBusy:
            pass
        else:
            raise AssertionError("a full queue must refuse")

        # A blocking submit waits for room, in a thread, off the event loop.
        waiting = threading.Thread(
            target=lambda: storage.submit(WriteBatch(entries=[change(4)]), timeout_s=None)
        )
        waiting.start()
        gate.release.set()
        waiting.join(timeout=30)
        assert not waiting.is_alive()
        storage.submit(WriteBatch(entries=[change(5)]), timeout_s=None).result(timeout=30)
        assert storage.last_index() == 5


def test_cancelled_future_is_still_written(data_dir: Path) -> None:
    gate = CommitGate()
    with Storage.open(data_dir, fault_injector=gate) as storage:
        storage.submit(WriteBatch(entries=[change(1)]))
        assert gate.entered.wait(timeout=30)
        cancelled = storage.submit(WriteBatch(entries=[change(2)]))
        assert cancelled.cancel()
        after = storage.submit(WriteBatch(entries=[change(3)]))
        gate.release.set()
        after.result(timeout=30)
        assert storage.last_index() == 3
