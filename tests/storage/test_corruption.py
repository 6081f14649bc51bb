"""Checksums are verified on every read path; corruption stops the storage."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from changeagent.storage import CorruptionError, Storage, WriteBatch

from .conftest import append, change, noop


def _tamper(data_dir: Path, statement: str, *parameters: object) -> None:
    connection = sqlite3.connect(data_dir / "changeagent.db")
    try:
        connection.execute(statement, parameters)
        connection.commit()
    finally:
        connection.close()


def _flip_body_byte(data_dir: Path, index: int) -> None:
    connection = sqlite3.connect(data_dir / "changeagent.db")
    try:
        (body,) = connection.execute("SELECT body FROM entries WHERE idx = ?", (index,)).fetchone()
        flipped = bytearray(body)
        flipped[len(flipped) // 2] ^= 0x01
        connection.execute("UPDATE entries SET body = ? WHERE idx = ?", (bytes(flipped), index))
        connection.commit()
    finally:
        connection.close()


READS: dict[str, Callable[[Storage], object]] = {
    "term": lambda storage: storage.term(3),
    "entries": lambda storage: storage.entries(1, 6, 1 << 20),
    "get_change": lambda storage: storage.get_change(3),
    "read_changes": lambda storage: storage.read_changes(0, 10, (), None, 5),
    "read_changes_tag": lambda storage: storage.read_changes(0, 10, ["t"], None, 5),
    "read_changes_type": lambda storage: storage.read_changes(0, 10, (), 4, 5),
    "at_start_tag_and_type": lambda storage: storage.read_changes(3, 10, ["t"], 4, 5),
}


@pytest.mark.parametrize("read", list(READS))
def test_flipped_byte_is_detected_on_every_read_path(data_dir: Path, read: str) -> None:
    with Storage.open(data_dir, tail_cache_bytes=0) as storage:
        append(storage, noop(1), change(2), change(3, type=4, tags=["t"]), change(4), change(5))
        _flip_body_byte(data_dir, 3)
        with pytest.raises(CorruptionError, match="entry 3") as raised:
            READS[read](storage)
        assert raised.value.index == 3
        assert storage.failure is not None and "entry 3" in storage.failure
        # From now on the storage serves nothing and takes nothing.
        with pytest.raises(CorruptionError):
            storage.last_index()
        with pytest.raises(CorruptionError):
            storage.get_change(2)
        with pytest.raises(CorruptionError):
            storage.submit(WriteBatch(entries=[change(6)]))


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET term = 7 WHERE idx = 3",
        "UPDATE entries SET type = 1 WHERE idx = 3",
        "UPDATE entries SET key = 'other' WHERE idx = 3",
        "UPDATE entries SET crc = crc + 1 WHERE idx = 3",
    ],
)
def test_every_checksummed_column_is_covered(data_dir: Path, statement: str) -> None:
    with Storage.open(data_dir, tail_cache_bytes=0) as storage:
        append(storage, change(1), change(2), change(3, key="k"))
        _tamper(data_dir, statement)
        with pytest.raises(CorruptionError, match="entry 3"):
            storage.entries(1, 4, 1 << 20)


def test_missing_row_is_corruption(data_dir: Path) -> None:
    with Storage.open(data_dir, tail_cache_bytes=0) as storage:
        append(storage, change(1), change(2), change(3))
        _tamper(data_dir, "DELETE FROM entries WHERE idx = 2")
        with pytest.raises(CorruptionError, match="entry 2"):
            storage.entries(1, 4, 1 << 20)


def test_corruption_found_while_opening(data_dir: Path) -> None:
    with Storage.open(data_dir) as storage:
        append(storage, change(1), change(2), change(3))
    _flip_body_byte(data_dir, 3)
    with pytest.raises(CorruptionError, match="entry 3"):
        Storage.open(data_dir)  # the tail is warmed from verified rows


def test_corrupt_metadata_is_refused_at_open(data_dir: Path) -> None:
    with Storage.open(data_dir) as storage:
        storage.submit(WriteBatch(meta={"node_id": b"7"})).result(timeout=30)
    _tamper(data_dir, "UPDATE meta SET value = CAST('xxxxx7' AS BLOB) WHERE key = 'node_id'")
    with pytest.raises(CorruptionError, match="node_id"):
        Storage.open(data_dir)


def test_log_start_must_follow_the_snapshot(data_dir: Path) -> None:
    with Storage.open(data_dir) as storage:
        append(storage, change(1), change(2), change(3))
    _tamper(data_dir, "DELETE FROM entries WHERE idx = 1")
    with pytest.raises(CorruptionError, match="log starts at 2"):
        Storage.open(data_dir)
