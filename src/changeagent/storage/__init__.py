"""Durable storage: the Raft log *is* the change list, on SQLite.

How it works:

- One SQLite database (WAL mode, synchronous=FULL) in the data directory
  (0700; files 0600). Table `entries` holds every Raft entry with its term,
  type, timestamp, idempotency key, wire bytes and a crc32 checksum; `tags`
  indexes user changes by tag; `meta` holds the hard state, the snapshot
  record and node metadata; `idempotency` maps keys to indices.
- Writes go through ONE writer thread. `submit(WriteBatch)` queues a batch and
  returns a future; the writer takes every batch queued while it was busy and
  commits them in one transaction: one fsync for all (group commit). Any
  failure rolls the transaction back and stops all writes for good
  (`StorageFailed`); nothing is acknowledged that was not committed.
- Reads never block on the writer. The newest entries (bounded by bytes) stay
  in an in-memory tail, updated only after each commit, so the Raft core and
  consumers at the tail never touch SQLite. Other reads use one read-only
  connection per thread; a seqlock retries reads that race a truncation or
  compaction. Every row read from SQLite has its checksum verified; a mismatch
  raises `CorruptionError` and the storage refuses all further reads and writes.

`Storage` implements `changeagent.raft.interfaces.LogReader`. See DESIGN.md
in this directory for the decisions and trade-offs.
"""

from changeagent.storage.batch import WriteBatch
from changeagent.storage.errors import (
    CorruptionError,
    StorageBusy,
    StorageClosed,
    StorageError,
    StorageFailed,
)
from changeagent.storage.store import (
    TAIL_CACHE_BYTES_DEFAULT,
    ChangePage,
    CommitObserver,
    FaultInjector,
    KnownAtStart,
    Storage,
)
from changeagent.storage.writer import BatchRejected

__all__ = [
    "TAIL_CACHE_BYTES_DEFAULT",
    "BatchRejected",
    "ChangePage",
    "CommitObserver",
    "CorruptionError",
    "FaultInjector",
    "KnownAtStart",
    "Storage",
    "StorageBusy",
    "StorageClosed",
    "StorageError",
    "StorageFailed",
    "WriteBatch",
]
