"""A seed: a member's committed log as a database file, for a node that joins.

A new member that would otherwise replay a long log one APPEND at a time
(every entry decoded, its fields derived, its rows built in Python) gets the
leader's committed prefix instead as the file `backup.copy_committed` makes:
entries, tags and idempotency keys with every checksum verified by the
sender, trimmed to the cut, no secret. The joining node checks the file
(`inspect_seed`), then installs it with `WriteBatch(discard_log=True,
seed=...)`: the writer attaches the file and copies its three tables with
`INSERT ... SELECT` in one transaction, at SQLite's speed.

Why this is safe in Raft terms: every entry of the seed is committed, and a
committed entry is the same on every member (Log Matching), so the log it
gives the new node is a prefix of every later leader's log. The leader then
probes the new member as usual and replicates from the seed's end on.
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path

from changeagent.raft.entry import HardState
from changeagent.raft.interfaces import Snapshot
from changeagent.storage.errors import StorageError
from changeagent.storage.opening import load_state


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
