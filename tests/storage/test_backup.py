"""`copy_committed`: a consistent copy of the committed prefix, cut after the commit
index, without the metadata it is told to drop, every row verified."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from changeagent.raft.entry import HardState
from changeagent.storage import CorruptionError, Storage, StorageError, WriteBatch
from changeagent.storage.backup import copy_committed

from .conftest import append, change, noop, write


def _rows(database: Path, query: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(database)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def _filled(data_dir: Path, commit: int) -> Storage:
    storage = Storage.open(data_dir)
    append(
        storage, noop(1), *(change(index, tags=["t"], key=f"k{index}") for index in range(2, 11))
    )
    write(
        storage,
        WriteBatch(
            hard_state=HardState(term=1, vote=1, commit=commit),
            meta={"node_id": b"7", "cluster_secret": b"s3cret"},
        ),
    )
    return storage


def _open_copy(copy: Path, tmp_path: Path) -> Storage:
    directory = tmp_path / "restored"
    directory.mkdir()
    copy.rename(directory / "changeagent.db")
    return Storage.open(directory)


def test_the_copy_holds_the_committed_prefix_only(tmp_path: Path) -> None:
    storage = _filled(tmp_path / "data", commit=7)
    try:
        copy = tmp_path / "copy.db"
        info = copy_committed(storage.data_dir, copy, 5, drop_meta=("cluster_secret",))
        # The copy's own durable commit index (7) proves more committed than the caller's 5.
        assert (info.commit_index, info.first_index) == (7, 1)
        assert (info.changes, info.first_change_id, info.last_change_id) == (6, 2, 7)
        assert info.database_bytes == copy.stat().st_size
        assert copy.stat().st_mode & 0o777 == 0o600
        assert _rows(copy, "SELECT max(idx) FROM tags") == [(7,)]
        assert _rows(copy, "SELECT max(idx) FROM idempotency") == [(7,)]
        assert _rows(copy, "SELECT count(*) FROM meta WHERE key = 'cluster_secret'") == [(0,)]
        # The source is untouched and still writable.
        assert storage.last_index() == 10
        append(storage, change(11))
    finally:
        storage.close()
    restored = _open_copy(copy, tmp_path)
    try:
        assert restored.last_index() == 7
        assert restored.hard_state() == HardState(term=1, vote=1, commit=7)
        assert restored.meta_get("node_id") == b"7"
        assert restored.meta_get("cluster_secret") is None
        assert [entry.index for entry in restored.entries(1, 8, 1 << 30)] == list(range(1, 8))
        assert restored.read_changes(0, 100).bodies == [
            change(i, tags=["t"]).data for i in range(2, 8)
        ]
    finally:
        restored.close()


def test_the_cut_is_never_below_the_applied_index_or_the_compaction_point(
    tmp_path: Path,
) -> None:
    storage = _filled(tmp_path / "data", commit=2)
    try:
        write(storage, WriteBatch(compact_to=4))
        info = copy_committed(storage.data_dir, tmp_path / "a.db", 3)
        # Cut at the compaction point: nothing after it is known committed.
        assert (info.commit_index, info.first_index, info.changes) == (4, 5, 0)
        info = copy_committed(storage.data_dir, tmp_path / "b.db", 9)
        assert (info.commit_index, info.first_index) == (9, 5)
        assert (info.changes, info.first_change_id, info.last_change_id) == (5, 5, 9)
        with pytest.raises(StorageError, match="before the applied index"):
            copy_committed(storage.data_dir, tmp_path / "c.db", 11)
        with pytest.raises(FileExistsError):
            copy_committed(storage.data_dir, tmp_path / "b.db", 9)
    finally:
        storage.close()


def test_a_corrupt_row_fails_the_copy(tmp_path: Path) -> None:
    storage = _filled(tmp_path / "data", commit=10)
    storage.close()
    connection = sqlite3.connect(tmp_path / "data" / "changeagent.db")
    connection.execute("UPDATE entries SET body = CAST('{}' AS BLOB) WHERE idx = 6")
    connection.commit()
    connection.close()
    with pytest.raises(CorruptionError, match="entry 6"):
        copy_committed(tmp_path / "data", tmp_path / "copy.db", 10)


def test_a_copy_without_verification_counts_the_same(tmp_path: Path) -> None:
    storage = _filled(tmp_path / "data", commit=7)
    try:
        verified = copy_committed(storage.data_dir, tmp_path / "a.db", 5)
        counted = copy_committed(storage.data_dir, tmp_path / "b.db", 5, verify=False)
        assert counted == verified
    finally:
        storage.close()
