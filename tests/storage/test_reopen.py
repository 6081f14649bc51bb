"""Opening: files and modes, what survives a close and reopen, exclusivity."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from changeagent.raft.entry import HardState
from changeagent.raft.interfaces import Membership, Snapshot
from changeagent.storage import Storage, StorageClosed, StorageError, WriteBatch

from .conftest import append, change, noop, write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_directory_is_0700_and_files_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    with Storage.open(data_dir) as storage:
        append(storage, change(1))
        assert _mode(data_dir) == 0o700
        for name in ("changeagent.db", "changeagent.db-wal", "changeagent.db-shm", "LOCK"):
            assert (data_dir / name).exists(), name
            assert _mode(data_dir / name) == 0o600, name


def test_existing_database_files_are_tightened(data_dir: Path) -> None:
    Storage.open(data_dir).close()
    (data_dir / "changeagent.db").chmod(0o644)
    with Storage.open(data_dir):
        assert _mode(data_dir / "changeagent.db") == 0o600


def test_reopen_keeps_everything(data_dir: Path) -> None:
    snapshot = Snapshot(
        index=2, term=1, membership=Membership(voters=frozenset({1, 2}), learners=frozenset({3})),
        data=b"settings",
    )
    with Storage.open(data_dir) as storage:
        append(storage, noop(1), change(2, key="k2"), change(3, tags=["a"], key="k3"))
        write(storage, WriteBatch(
            hard_state=HardState(term=4, vote=2, commit=3),
            meta={"node_id": b"7", "cluster_id": b"c1"},
        ))
        write(storage, WriteBatch(snapshot=snapshot, compact_to=2))
        append(storage, change(4, term=4, type=5))
        before = storage.entries(3, 5, 1 << 20)
    for tail_bytes in (0, 1 << 20):
        with Storage.open(data_dir, tail_cache_bytes=tail_bytes) as storage:
            assert storage.hard_state() == HardState(term=4, vote=2, commit=3)
            assert storage.snapshot() == snapshot
            assert storage.meta_get("node_id") == b"7"
            assert storage.meta_items() == {"node_id": b"7", "cluster_id": b"c1"}
            assert (storage.first_index(), storage.last_index()) == (3, 4)
            assert storage.entries(3, 5, 1 << 20) == before
            assert storage.idempotency_lookup("k3") == 3
            assert storage.idempotency_lookup("k2") is None  # compacted with its entry
            assert storage.first_user_index() == 3
            assert storage.read_changes(0, 10, ["a"], None, 4).bodies == [before[0].data]


def test_warm_tail_after_reopen(data_dir: Path) -> None:
    with Storage.open(data_dir) as storage:
        append(storage, *[change(index) for index in range(1, 101)])
    with Storage.open(data_dir, tail_warm_bytes=10 * 1024) as storage:
        stats = storage.stats()
        assert 0 < stats["tail_entries"] < 100
        assert stats["tail_bytes"] <= 10 * 1024
        assert storage.read_changes(90, 100, (), None, 100).bodies == [
            change(index).data for index in range(91, 101)
        ]


def test_second_open_of_the_same_directory_is_refused(data_dir: Path) -> None:
    with Storage.open(data_dir), pytest.raises(StorageError, match="in use"):
        Storage.open(data_dir)


def test_closed_storage_refuses_reads_and_writes(data_dir: Path) -> None:
    storage = Storage.open(data_dir)
    append(storage, change(1))
    storage.close()
    storage.close()  # idempotent
    with pytest.raises(StorageClosed):
        storage.last_index()
    with pytest.raises(StorageClosed):
        storage.submit(WriteBatch(entries=[change(2)]))


def test_close_writes_everything_already_submitted(data_dir: Path) -> None:
    storage = Storage.open(data_dir)
    futures = [storage.submit(WriteBatch(entries=[change(index)])) for index in range(1, 51)]
    storage.close()
    assert all(future.result(timeout=0) is None for future in futures)
    with Storage.open(data_dir) as reopened:
        assert reopened.last_index() == 50


def test_invalid_options_are_rejected(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="tail_cache_bytes"):
        Storage.open(data_dir, tail_cache_bytes=-1)
    with pytest.raises(ValueError, match="queue_batches_max"):
        Storage.open(data_dir, queue_batches_max=0)
