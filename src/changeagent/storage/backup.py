"""A consistent copy of the committed log, taken while the node runs (GET /backup).

`copy_committed` runs on a worker thread. `VACUUM INTO` on a connection of its
own reads the database in one read transaction: WAL gives it a snapshot of one
commit, so the copy never mixes states, and the writer goes on committing
meanwhile (a WAL reader blocks no writer). The copy has no free pages. Then, in the copy only:

- entries after the cut are deleted (with their tags and idempotency keys), so the
  copy holds the committed prefix and nothing a new leader could still replace;
  the hard state's commit index becomes the cut;
- the metadata keys the caller names (the cluster secret) are deleted: a backup
  must not let its reader impersonate a member;
- every row's checksum is verified, so a backup never carries corrupt data.

The deleted suffix leaves a few free pages (it is at most what was in flight);
a second VACUUM would rewrite the whole copy to save them.

The cut is the caller's applied index taken before the copy began (every entry up
to it is committed and on disk here), raised to what the copy itself proves
committed: its compaction point and its durable commit index.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from changeagent.storage import reads, schema
from changeagent.storage.errors import StorageError
from changeagent.storage.opening import load_state
from changeagent.storage.records import encode_hard_state, seal_meta

_DELETE_AFTER = (
    "DELETE FROM entries WHERE idx > ?",
    "DELETE FROM tags WHERE idx > ?",
    "DELETE FROM idempotency WHERE idx > ?",
)
_ALL_ROWS = "SELECT idx, term, type, key, body, crc FROM entries ORDER BY idx"
_BOUNDS = "SELECT count(*), min(idx), max(idx) FROM entries"
_CHANGE_BOUNDS = "SELECT count(*), min(idx), max(idx) FROM entries WHERE type >= 0"


@dataclass(frozen=True, slots=True)
class CopyInfo:
    """What the copy holds: log entries (first_index, commit_index], of which
    `changes` are user changes with ids from first_change_id to last_change_id
    (0 and 0 when none)."""

    commit_index: int
    first_index: int
    changes: int
    first_change_id: int
    last_change_id: int
    database_bytes: int


def copy_committed(
    data_dir: Path,
    destination: Path,
    applied_index: int,
    drop_meta: Iterable[str] = (),
    verify: bool = True,
) -> CopyInfo:
    """Write the committed prefix of the log in `data_dir` (at least up to
    `applied_index`) to the new file `destination` (created 0600; it must not exist).
    `verify=False` skips the check of every row's checksum (the rows keep their
    checksums, so whoever reads them later still finds a corrupt one): a seed for a
    joining node, where Python per row would cost more than the copy itself."""
    descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(descriptor)  # VACUUM INTO accepts an empty file: this one keeps mode 0600
    source = sqlite3.connect(
        f"file:{schema.database_path(data_dir)}?mode=ro", uri=True, isolation_level=None
    )
    try:
        source.execute("PRAGMA busy_timeout=10000").fetchall()
        source.execute("VACUUM INTO ?", (str(destination),))
    finally:
        source.close()
    copy = sqlite3.connect(destination, isolation_level=None)
    try:
        info = _cut(copy, applied_index, tuple(drop_meta), verify)
    finally:
        copy.close()
    return replace(info, database_bytes=destination.stat().st_size)


def _cut(
    copy: sqlite3.Connection, applied_index: int, drop_meta: tuple[str, ...], verify: bool
) -> CopyInfo:
    copy.execute("PRAGMA journal_mode=DELETE").fetchall()
    copy.execute("PRAGMA synchronous=OFF").fetchall()  # a temporary file, streamed then removed
    copy.execute("BEGIN IMMEDIATE")
    try:
        state = load_state(copy)
        durable_commit = min(state.hard_state.commit, state.last_index)
        cut = max(applied_index, state.snapshot.index, durable_commit)
        if cut > state.last_index:
            raise StorageError(
                f"the copy ends at {state.last_index}, before the applied index {cut}"
            )
        for statement in _DELETE_AFTER:
            copy.execute(statement, (cut,))
        hard_state = replace(state.hard_state, commit=cut)
        sealed = seal_meta(schema.META_HARD_STATE, encode_hard_state(hard_state))
        copy.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (schema.META_HARD_STATE, sealed),
        )
        copy.executemany("DELETE FROM meta WHERE key = ?", [(key,) for key in drop_meta])
        if verify:
            info = _verify_rows(copy, state.snapshot.index, cut)
        else:
            info = _count_rows(copy, state.snapshot.index, cut)
        copy.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            copy.execute("ROLLBACK")
        raise
    return info


def _count_rows(copy: sqlite3.Connection, snapshot_index: int, cut: int) -> CopyInfo:
    """What `_verify_rows` finds, from the indexes alone (no row is read)."""
    entries, first, last = copy.execute(_BOUNDS).fetchone()
    if entries != cut - snapshot_index or (entries and (first, last) != (snapshot_index + 1, cut)):
        raise StorageError(f"the copy's log is not contiguous from {snapshot_index + 1} to {cut}")
    changes, first_change, last_change = copy.execute(_CHANGE_BOUNDS).fetchone()
    return CopyInfo(cut, snapshot_index + 1, changes, first_change or 0, last_change or 0, 0)


def _verify_rows(copy: sqlite3.Connection, snapshot_index: int, cut: int) -> CopyInfo:
    """Check every row's checksum and that the log is contiguous; count the changes."""
    expected = snapshot_index + 1
    changes = first_change = last_change = 0
    for row in copy.execute(_ALL_ROWS):
        index, _, entry_type, _, _, _ = reads.verify(row)
        if index != expected:
            raise StorageError(f"entry {expected} is missing from the copy")
        expected += 1
        if entry_type >= 0:
            changes += 1
            first_change = first_change or index
            last_change = index
    if expected != cut + 1:
        raise StorageError(f"the copy ends at {expected - 1}, not at {cut}")
    return CopyInfo(cut, snapshot_index + 1, changes, first_change, last_change, 0)
