"""Opening a storage: the directory lock, the stored state, the warm tail."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from changeagent.raft.entry import HardState
from changeagent.raft.interfaces import Snapshot
from changeagent.storage import reads, schema
from changeagent.storage.errors import CorruptionError, StorageError
from changeagent.storage.records import (
    decode_hard_state,
    decode_snapshot,
    derive_fields,
    open_meta,
    seal_meta,
)
from changeagent.storage.tail import NO_TAGS, TailCache, TailRecord, make_record, record_cost_bytes
from changeagent.storage.writer import LogState

LOCK_FILE = "LOCK"


def lock_directory(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory while open: one process per log."""
    descriptor = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StorageError(f"{data_dir} is in use by another storage") from None
    return descriptor


def load_state(connection: sqlite3.Connection) -> LogState:
    """Read the metadata and the log's bounds, checking both."""
    meta: dict[str, bytes] = {}
    for key, stored in connection.execute("SELECT key, value FROM meta").fetchall():
        value = open_meta(key, stored)
        if value is None:
            raise CorruptionError(f"checksum mismatch in metadata {key!r}")
        meta[key] = value
    version = meta.pop(schema.META_SCHEMA_VERSION, None)
    if version is None:
        value = str(schema.SCHEMA_VERSION).encode()
        connection.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            (schema.META_SCHEMA_VERSION, seal_meta(schema.META_SCHEMA_VERSION, value)),
        )
    elif int(version) != schema.SCHEMA_VERSION:
        raise StorageError(f"unsupported storage schema version {int(version)}")
    hard_state_data = meta.pop(schema.META_HARD_STATE, None)
    snapshot_data = meta.pop(schema.META_SNAPSHOT, None)
    hard_state = HardState() if hard_state_data is None else decode_hard_state(hard_state_data)
    snapshot = Snapshot() if snapshot_data is None else decode_snapshot(snapshot_data)
    first, last = connection.execute("SELECT min(idx), max(idx) FROM entries").fetchone()
    if first is not None and first != snapshot.index + 1:
        raise CorruptionError(
            f"log starts at {first} but the snapshot ends at {snapshot.index}", index=first
        )
    row = connection.execute(
        "SELECT idx FROM entries WHERE +type >= 0 ORDER BY idx LIMIT 1"
    ).fetchone()
    return LogState(
        snapshot=snapshot,
        last_index=snapshot.index if last is None else int(last),
        hard_state=hard_state,
        first_user_index=0 if row is None else int(row[0]),
        meta=meta,
    )


def warm_tail(
    connection: sqlite3.Connection, state: LogState, budget_bytes: int, warm_bytes: int
) -> TailCache:
    """A tail holding the newest entries, up to `warm_bytes`, each verified."""
    tail = TailCache(budget_bytes, start=state.last_index + 1)
    warm_bytes = min(warm_bytes, budget_bytes)
    newest: list[TailRecord] = []
    used_bytes = 0
    expected = state.last_index
    rows = reads.newest_entries(connection, state.snapshot.index + 1)
    try:
        for entry in rows:
            if entry.index != expected:
                raise CorruptionError(f"entry {expected} is missing", index=expected)
            tags = derive_fields(entry.data).tags if entry.type >= 0 else NO_TAGS
            record = make_record(entry, tags)
            used_bytes += record_cost_bytes(record)
            if used_bytes > warm_bytes:
                break
            newest.append(record)
            expected -= 1
    finally:
        rows.close()  # closes the cursor now, even when we stopped early
    newest.reverse()
    tail.append(expected + 1, newest)
    return tail
