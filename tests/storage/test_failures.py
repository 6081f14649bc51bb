"""Fail-stop writes: a failed commit is rolled back, never acknowledged, never retried."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from changeagent.raft.entry import HardState
from changeagent.storage import Storage, StorageFailed, WriteBatch

from .conftest import append, change


class FailAt:
    """Fails commit number `failing` (after holding it until released, if asked)."""

    def __init__(self, failing: int, hold: bool = False) -> None:
        self.failing = failing
        self.hold = hold
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []

    def __call__(self, commit_number: int) -> None:
        self.calls.append(commit_number)
        if commit_number == self.failing:
            self.entered.set()
            if self.hold and not self.release.wait(timeout=30):
                raise TimeoutError("never released")
            raise OSError(28, "No space left on device (injected)")


def test_failed_commit_is_not_acknowledged_and_stops_writes(data_dir: Path) -> None:
    injector = FailAt(2)
    with Storage.open(data_dir, fault_injector=injector) as storage:
        append(storage, change(1))
        failed = storage.submit(
            WriteBatch(hard_state=HardState(5, 1, 2), entries=[change(2, key="k")])
        )
        with pytest.raises(StorageFailed, match="No space left"):
            failed.result(timeout=30)
        assert storage.failure is not None and "No space left" in storage.failure
        # Nothing of the failed batch is visible ...
        assert storage.last_index() == 1
        assert storage.hard_state() == HardState()
        assert storage.idempotency_lookup("k") is None
        assert storage.get_change(2) is None
        # ... committed data is still readable, and every later write fails at once.
        assert storage.get_change(1) == change(1).data
        with pytest.raises(StorageFailed):
            storage.submit(WriteBatch(entries=[change(2)]))
        assert injector.calls == [1, 2]  # never retried
    with Storage.open(data_dir) as reopened:
        assert reopened.last_index() == 1
        assert reopened.idempotency_lookup("k") is None


def test_batches_queued_behind_a_failure_fail_too(data_dir: Path) -> None:
    injector = FailAt(1, hold=True)
    with Storage.open(data_dir, fault_injector=injector) as storage:
        first = storage.submit(WriteBatch(entries=[change(1)]))
        assert injector.entered.wait(timeout=30)
        queued = [storage.submit(WriteBatch(entries=[change(index)])) for index in (2, 3)]
        injector.release.set()
        for future in [first, *queued]:
            with pytest.raises(StorageFailed):
                future.result(timeout=30)
        assert storage.last_index() == 0
        assert injector.calls == [1]


def test_async_write_raises_storage_failed(data_dir: Path) -> None:
    with Storage.open(data_dir, fault_injector=FailAt(1)) as storage:
        with pytest.raises(StorageFailed):
            asyncio.run(storage.write(WriteBatch(entries=[change(1)])))
        with pytest.raises(StorageFailed):
            asyncio.run(storage.write(WriteBatch(entries=[change(1)])))


def test_real_disk_full_from_sqlite(data_dir: Path) -> None:
    """SQLITE_FULL from a page limit: a real error path through SQLite, not an injection."""
    with Storage.open(data_dir, sqlite_pragmas={"max_page_count": 16}) as storage:
        append(storage, change(1))
        big = [change(index, data="x" * 4000) for index in range(2, 40)]
        future = storage.submit(WriteBatch(entries=big))
        with pytest.raises(StorageFailed, match="full"):
            future.result(timeout=30)
        assert storage.last_index() == 1
        with pytest.raises(StorageFailed):
            storage.submit(WriteBatch(entries=[change(2)]))
    with Storage.open(data_dir) as reopened:
        assert reopened.last_index() == 1
        append(reopened, change(2))  # with room again, the log continues
        assert reopened.last_index() == 2
