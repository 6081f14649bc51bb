"""`Storage.write(batch, now_if_idle=True)`: a small append written on the caller's
thread when the writer thread is idle, and everything else as before."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from changeagent.raft.entry import HardState
from changeagent.raft.interfaces import Snapshot
from changeagent.storage import Storage, StorageFailed, WriteBatch, store
from tests.support.disk import inline_whatever_the_disk

from .conftest import change


@pytest.fixture(autouse=True)
def _inline(monkeypatch: pytest.MonkeyPatch) -> None:
    inline_whatever_the_disk(monkeypatch)  # the last test sets its own limit


class ThreadRecorder:
    """A fault injector that notes which thread ran each commit."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def __call__(self, commit_number: int) -> None:
        self.threads.append(threading.get_ident())


class Gate:
    """Holds commit number `held` until released (no sleeps)."""

    def __init__(self, held: int) -> None:
        self.held = held
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, commit_number: int) -> None:
        if commit_number == self.held:
            self.entered.set()
            if not self.release.wait(timeout=30):
                raise TimeoutError("test gate was never released")


def test_a_small_append_is_written_on_the_callers_thread(data_dir: Path) -> None:
    recorder = ThreadRecorder()

    async def main(storage: Storage) -> None:
        for index in range(1, 4):
            await storage.write(WriteBatch(entries=[change(index)]), now_if_idle=True)

    with Storage.open(data_dir, fault_injector=recorder) as storage:
        asyncio.run(main(storage))
        assert recorder.threads == [threading.get_ident()] * 3
        assert storage.commit_count == 3
        assert storage.last_index() == 3
        assert [entry.index for entry in storage.entries(1, 4, 1 << 20)] == [1, 2, 3]


def test_what_stays_on_the_writer_thread(data_dir: Path) -> None:
    """Without the flag, more than one entry, and anything that removes entries."""
    recorder = ThreadRecorder()
    here = threading.get_ident()

    async def main(storage: Storage) -> None:
        await storage.write(WriteBatch(entries=[change(1)]))
        await storage.write(WriteBatch(entries=[change(2), change(3)]), now_if_idle=True)
        await storage.write(WriteBatch(entries=[change(4)]), now_if_idle=True)  # after 2
        await storage.write(WriteBatch(entries=[change(5)]), now_if_idle=True)  # after 1
        await storage.write(WriteBatch(compact_to=2), now_if_idle=True)
        await storage.write(WriteBatch(entries=[change(3, term=2)]), now_if_idle=True)

    with Storage.open(data_dir, fault_injector=recorder) as storage:
        asyncio.run(main(storage))
        on_caller = [thread == here for thread in recorder.threads]
        # 1: no flag; 2-3: two entries; 4: the first small batch after a group of
        # two (writes may be arriving faster than one per fsync); 5: inline; the
        # compaction: it removes entries by itself; the conflicting 3: inline, its
        # truncation fenced from readers as on the writer thread.
        assert on_caller == [False, False, False, True, False, True]
        assert storage.last_index() == 3
        assert storage.term(3) == 2


def test_a_large_append_goes_to_the_writer_thread(data_dir: Path) -> None:
    """One entry of more than `WRITE_NOW_BYTES_MAX` bytes: the event loop does not
    stop for its copy, checksum and fsync (a 20 MiB change: ~150 ms)."""
    recorder = ThreadRecorder()
    here = threading.get_ident()
    fits = "x" * (store.WRITE_NOW_BYTES_MAX - 200)  # with its JSON: just under
    too_large = "x" * store.WRITE_NOW_BYTES_MAX

    async def main(storage: Storage) -> None:
        await storage.write(WriteBatch(entries=[change(1)]), now_if_idle=True)
        await storage.write(WriteBatch(entries=[change(2, data=fits)]), now_if_idle=True)
        await storage.write(WriteBatch(entries=[change(3, data=too_large)]), now_if_idle=True)

    with Storage.open(data_dir, fault_injector=recorder) as storage:
        asyncio.run(main(storage))
        assert [thread == here for thread in recorder.threads] == [True, True, False]
        assert storage.last_index() == 3


def test_a_busy_writer_keeps_the_order(data_dir: Path) -> None:
    """While the writer thread commits, a write asked now goes behind it."""
    gate = Gate(held=1)

    async def main(storage: Storage) -> None:
        first = storage.submit(WriteBatch(entries=[change(1)]))
        assert await asyncio.to_thread(gate.entered.wait, 30)
        second = asyncio.ensure_future(
            storage.write(WriteBatch(entries=[change(2)]), now_if_idle=True)
        )
        await asyncio.sleep(0)  # let it run up to its wait: it must not have written
        assert not second.done()
        assert storage.last_index() == 0
        gate.release.set()
        await second
        assert first.result(timeout=30) is None

    with Storage.open(data_dir, fault_injector=gate) as storage:
        asyncio.run(main(storage))
        assert storage.last_index() == 2


def test_inline_and_threaded_writers_never_share_the_connection(data_dir: Path) -> None:
    """A thread's batches (metadata) and the loop's inline appends, interleaved."""
    count = 300

    def other_writer(storage: Storage) -> None:
        for number in range(count):
            storage.submit(WriteBatch(meta={"n": b"%d" % number}), timeout_s=None).result(30)

    async def main(storage: Storage) -> None:
        thread = threading.Thread(target=other_writer, args=(storage,))
        thread.start()
        for index in range(1, count + 1):
            await storage.write(WriteBatch(entries=[change(index)]), now_if_idle=True)
        await asyncio.to_thread(thread.join, 30)

    with Storage.open(data_dir) as storage:
        asyncio.run(main(storage))
        assert storage.last_index() == count
        assert storage.meta_get("n") == b"%d" % (count - 1)
    with Storage.open(data_dir) as reopened:
        assert reopened.last_index() == count
        assert [entry.index for entry in reopened.entries(1, count + 1, 1 << 30)] == list(
            range(1, count + 1)
        )


def test_a_failed_inline_write_fails_the_storage(data_dir: Path) -> None:
    def fail_second(commit_number: int) -> None:
        if commit_number == 2:
            raise OSError(5, "injected I/O error")

    async def main(storage: Storage) -> None:
        await storage.write(WriteBatch(entries=[change(1)]), now_if_idle=True)
        with pytest.raises(StorageFailed):
            await storage.write(WriteBatch(entries=[change(2)]), now_if_idle=True)
        with pytest.raises(StorageFailed):
            await storage.write(WriteBatch(entries=[change(2)]), now_if_idle=True)

    with Storage.open(data_dir, fault_injector=fail_second) as storage:
        asyncio.run(main(storage))
        assert storage.failure is not None
        assert storage.last_index() == 1
    with Storage.open(data_dir) as reopened:
        assert reopened.last_index() == 1


def test_a_hard_state_alone_is_written_inline(data_dir: Path) -> None:
    recorder = ThreadRecorder()

    async def main(storage: Storage) -> None:
        await storage.write(WriteBatch(hard_state=HardState(3, 2, 0)), now_if_idle=True)

    with Storage.open(data_dir, fault_injector=recorder) as storage:
        asyncio.run(main(storage))
        assert recorder.threads == [threading.get_ident()]
        assert storage.hard_state() == HardState(3, 2, 0)


def test_installing_a_snapshot_goes_to_the_writer_thread(data_dir: Path) -> None:
    recorder = ThreadRecorder()

    async def main(storage: Storage) -> None:
        snapshot = Snapshot(index=5, term=1, membership=storage.snapshot().membership)
        await storage.write(WriteBatch(snapshot=snapshot), now_if_idle=True)

    with Storage.open(data_dir, fault_injector=recorder) as storage:
        asyncio.run(main(storage))
        assert recorder.threads and recorder.threads[0] != threading.get_ident()
        assert storage.snapshot().index == 5


def test_after_a_slow_commit_the_writer_thread_writes(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event loop never blocks on a disk slower than `WRITE_NOW_COMMIT_S_MAX`."""
    recorder = ThreadRecorder()

    async def main(storage: Storage) -> None:
        await storage.write(WriteBatch(entries=[change(1)]), now_if_idle=True)
        monkeypatch.setattr(store, "WRITE_NOW_COMMIT_S_MAX", 0.0)  # every commit is "slow"
        await storage.write(WriteBatch(entries=[change(2)]), now_if_idle=True)
        await storage.write(WriteBatch(entries=[change(3)]), now_if_idle=True)

    with Storage.open(data_dir, fault_injector=recorder) as storage:
        asyncio.run(main(storage))
        here = threading.get_ident()
        assert [thread == here for thread in recorder.threads] == [True, False, False]
        assert storage.last_index() == 3
