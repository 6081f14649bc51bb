"""The SQLite schema and how connections are opened.

Tables:
  entries      the Raft log: one row per entry, user changes and internal entries.
  tags         (tag, idx) for user changes, so tag filters are index range scans.
  meta         hard state, snapshot record, schema version and node metadata.
  idempotency  idempotency key -> index of the entry that carries it.

The secondary indexes exist so that removing a range of the log (truncation,
compaction) and filtering by type never scan the whole table.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path

SCHEMA_VERSION = 1
DATABASE_FILE = "changeagent.db"
DATABASE_SUFFIXES = ("", "-wal", "-shm")

META_SCHEMA_VERSION = "storage.schema_version"
META_HARD_STATE = "storage.hard_state"
META_SNAPSHOT = "storage.snapshot"
RESERVED_META_PREFIX = "storage."

_DDL = (
    """CREATE TABLE IF NOT EXISTS entries (
        idx INTEGER PRIMARY KEY,
        term INTEGER NOT NULL,
        type INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        crc INTEGER NOT NULL,
        key TEXT NOT NULL,
        body BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS entries_by_type ON entries (type, idx)",
    """CREATE TABLE IF NOT EXISTS tags (
        tag TEXT NOT NULL,
        idx INTEGER NOT NULL,
        PRIMARY KEY (tag, idx)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS tags_by_idx ON tags (idx)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY,
        idx INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS idempotency_by_idx ON idempotency (idx)",
)

# Durability first: WAL with synchronous=FULL fsyncs the WAL at every commit.
# The WAL is checkpointed every 1,000 pages and truncated back to 64 MiB so it
# cannot grow without bound. No mmap: mapped pages would count in RSS and an
# I/O error on a mapped page is a signal, not an error code.
_WRITER_PRAGMAS: dict[str, int | str] = {
    "journal_mode": "WAL",
    "synchronous": "FULL",
    "cache_size": -8192,  # KiB
    "temp_store": "MEMORY",
    "mmap_size": 0,
    "journal_size_limit": 64 * 1024 * 1024,
    "wal_autocheckpoint": 1000,
    "foreign_keys": 0,
    "busy_timeout": 10_000,  # ms; only another process's checkpoint could make us wait
}
_READER_PRAGMAS: dict[str, int | str] = {
    "cache_size": -4096,  # KiB, per reading thread
    "temp_store": "MEMORY",
    "mmap_size": 0,
    "query_only": 1,
    "busy_timeout": 10_000,  # ms; WAL readers wait only during WAL recovery or reset
}


def database_path(data_dir: Path) -> Path:
    return data_dir / DATABASE_FILE


def prepare_directory(data_dir: Path) -> None:
    """Create the data directory (0700) and the database file (0600) if missing.

    SQLite gives the -wal and -shm files the database file's permissions, so
    creating the database file ourselves with 0600 keeps all three private
    without touching the process-wide umask.
    """
    if not data_dir.exists():
        data_dir.mkdir(mode=0o700, parents=True)
        os.chmod(data_dir, 0o700)  # mkdir's mode is filtered by the umask
        fsync_directory(data_dir.parent)  # so a power cut cannot lose the directory
    path = database_path(data_dir)
    if not path.exists():
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(descriptor)
        fsync_directory(data_dir)


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def restrict_file_modes(data_dir: Path) -> None:
    """Make sure the database and its companions are 0600 (e.g. after a restore)."""
    for suffix in DATABASE_SUFFIXES:
        path = Path(str(database_path(data_dir)) + suffix)
        if path.exists():
            os.chmod(path, 0o600)


def _apply_pragmas(connection: sqlite3.Connection, pragmas: Mapping[str, int | str]) -> None:
    for name, value in pragmas.items():
        connection.execute(f"PRAGMA {name}={value}").fetchall()


def connect_writer(
    data_dir: Path, extra_pragmas: Mapping[str, int | str] | None = None
) -> sqlite3.Connection:
    """The one writing connection: creates the schema; owned by the writer thread."""
    connection = sqlite3.connect(
        database_path(data_dir),
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # opened here, then handed to the writer thread
        cached_statements=256,
    )
    _apply_pragmas(connection, _WRITER_PRAGMAS)
    mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal":
        connection.close()
        raise sqlite3.OperationalError(f"could not enable WAL mode (got {mode!r})")
    connection.execute("BEGIN IMMEDIATE")
    try:
        for statement in _DDL:
            connection.execute(statement)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        connection.close()
        raise
    if extra_pragmas:
        _apply_pragmas(connection, extra_pragmas)
    return connection


def connect_reader(data_dir: Path) -> sqlite3.Connection:
    """A read-only connection for one reading thread (closed by `Storage.close`)."""
    connection = sqlite3.connect(
        database_path(data_dir),
        isolation_level=None,
        check_same_thread=False,  # closed by whichever thread closes the storage
        cached_statements=256,
    )
    _apply_pragmas(connection, _READER_PRAGMAS)
    return connection
