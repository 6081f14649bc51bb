"""A seed: a member's committed log as a database file, for a node that joins.

A new member that would otherwise replay a long log one APPEND at a time
(every entry decoded, its fields derived, its rows built in Python) gets the
leader's committed prefix instead as the file `backup.copy_committed` makes:
entries, tags and idempotency keys, trimmed to the cut, no secret. The joining
node checks the file (`inspect_seed`), then `WriteBatch(seed=...)` makes it
the database: the writer rewrites the seed's metadata to this node's own
(`prepare_seed`: node id, cluster identity, the given hard state; the
sender's are dropped), switches it to WAL, and moves it over the database
file once no read is running (see `Storage`): nothing is copied row by row.

Why this is safe in Raft terms: every entry of the seed is committed, and a
committed entry is the same on every member (Log Matching), so the log it
gives the new node is a prefix of every later leader's log. The leader then
probes the new member as usual and replicates from the seed's end on.

The rows keep the checksums the sender stored; they are verified when read,
as on every node (the sender skips its own pass over every row for a seed:
it would cost more than the copy).
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from changeagent.raft.entry import HardState
from changeagent.raft.interfaces import Snapshot
from changeagent.storage import schema
from changeagent.storage.errors import StorageError
from changeagent.storage.opening import load_state
from changeagent.storage.records import encode_hard_state, seal_meta


@dataclass(frozen=True, slots=True)
class SeedInfo:
    """A checked seed file: its log is (snapshot.index, last_index], all committed."""

    path: Path
    snapshot: Snapshot
    hard_state: HardState
    last_index: int

    @property
    def entries(self) -> int:
        return self.last_index - self.snapshot.index


def inspect_seed(path: Path) -> SeedInfo:
    """Check that `path` is a committed log prefix of this storage's schema:
    sealed metadata, a contiguous log from its snapshot on, every entry committed.
    Raises StorageError naming what is wrong."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as error:
        raise StorageError(f"the seed cannot be opened: {error}") from None
    try:
        state = load_state(connection)
        first, last, count = connection.execute(
            "SELECT min(idx), max(idx), count(*) FROM entries"
        ).fetchone()
    except (sqlite3.Error, ValueError, struct.error) as error:  # not a log of this schema
        raise StorageError(f"the seed is not a changeagent log: {error}") from None
    finally:
        with contextlib.suppress(sqlite3.Error):
            connection.close()
    snapshot = state.snapshot
    if count and (first != snapshot.index + 1 or count != last - first + 1):
        raise StorageError(f"the seed's log has gaps: {count} entries from {first} to {last}")
    last_index = snapshot.index if last is None else int(last)
    if state.hard_state.commit != last_index:
        raise StorageError(
            f"the seed holds entries up to {last_index} but only {state.hard_state.commit} "
            "are committed"
        )
    return SeedInfo(path, snapshot, state.hard_state, last_index)


def prepare_seed(path: Path, meta: Mapping[str, bytes], hard_state: HardState) -> None:
    """Make the checked seed at `path` this node's database: its metadata becomes
    `meta` (this node's) and `hard_state`, only its schema version and snapshot
    record are kept; then WAL mode. Durable when this returns."""
    kept = (schema.META_SCHEMA_VERSION, schema.META_SNAPSHOT)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=FULL").fetchall()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("DELETE FROM meta WHERE key NOT IN (?, ?)", kept)
        rows = [(key, seal_meta(key, bytes(value))) for key, value in meta.items()]
        hard = encode_hard_state(hard_state)
        rows.append((schema.META_HARD_STATE, seal_meta(schema.META_HARD_STATE, hard)))
        connection.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", rows)
        connection.execute("COMMIT")
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"the seed could not be switched to WAL (got {mode!r})")
    finally:
        connection.close()
