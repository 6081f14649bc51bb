"""The storage exception hierarchy, drawn once.

    StorageError
    ├── StorageFailed      fail-stop: a write, commit or fsync failed, or data is corrupt
    │   └── CorruptionError  a checksum did not match (names the index)
    ├── StorageClosed      the storage was closed
    └── StorageBusy        the write queue is full (back-pressure; retry later)

Programmer errors (a batch that does not fit the log) raise `ValueError`.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every storage error."""


class StorageFailed(StorageError):
    """The storage stopped taking writes after a failure; it never retries.

    Raised by every later `submit` and set on every pending write future.
    `maybe_written`: the batch's COMMIT itself failed (an fsync's error, say). Its
    WAL frames may have reached the disk whole, and SQLite's recovery then finds
    the transaction committed when the database is next opened: the batch is not
    known to be lost, only not acknowledged.
    """

    def __init__(self, message: str, maybe_written: bool = False) -> None:
        super().__init__(message)
        self.maybe_written = maybe_written


class CorruptionError(StorageFailed):
    """Stored data does not match its checksum. Once raised, every later read
    and write raises it too: a node never serves or ships corrupt data."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class StorageClosed(StorageError):
    """The storage was closed."""


class StorageBusy(StorageError):
    """Too many write batches are queued; the caller should slow down."""
