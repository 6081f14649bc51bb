"""Restore: a backup file (`backup_format.py`) becomes a new standalone node.

1. The target directory must be new or empty: a restore never mixes with data.
2. Everything happens in a staging directory next to it (same filesystem): the
   database bytes are written there while `BackupVerifier` checks the file, so a
   truncated or corrupted backup is refused before anything else is done, and the
   staging directory is removed.
3. The copy is opened as storage (its metadata and newest entries are checked
   again) and made a node of its own, as a removed member leaves its cluster
   (`ClusterMembership.leave`): a new random node id, no cluster id or secret, and
   a RESET membership entry after the last index in a new term, which makes the
   membership {new node} for the Raft core and for `ReplicatedState` alike. The
   changes keep their `_id`s; the node's first start campaigns, so its no-op takes
   the next index and new writes continue after the last `_id`.
4. The staging directory is renamed onto the target and the parent fsynced.

A restored node holds changes, so it cannot join another cluster; it can found
one (POST /cluster/members with its own address), and empty nodes can join it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from changeagent.backup_format import BackupCorrupted, BackupHeader, BackupVerifier
from changeagent.node.identity import META_NODE_ID, NODE_ID_MAX, cluster_meta
from changeagent.raft import ENTRY_TYPE_MEMBERSHIP, ConfChange, ConfChangeKind, Entry, HardState
from changeagent.storage import Storage, WriteBatch
from changeagent.storage.schema import DATABASE_FILE

READ_CHUNK_BYTES = 1024 * 1024


class RestoreRefused(Exception):
    """The target cannot be used (not empty, not a directory); nothing was written."""


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore made: the node, and what the backup held."""

    data_dir: Path
    node_id: int
    header: BackupHeader
    reset_index: int  # the RESET entry's index: the log continues after it


def restore(source: Path, data_dir: Path) -> Restored:
    """Make a standalone node in `data_dir` from the backup file `source`.
    Raises `backup_format.BackupError` for a bad file, RestoreRefused for a bad
    target, OSError and StorageError for the rest."""
    _check_target(data_dir)
    parent = data_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restoring-", dir=parent))
    try:
        header = _extract(source, staging / DATABASE_FILE)
        node_id, reset_index = _make_standalone(staging)
        _check_target(data_dir)  # still new or empty: rename replaces an empty directory
        os.rename(staging, data_dir)
        _fsync_directory(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Restored(data_dir, node_id, header, reset_index)


def _check_target(data_dir: Path) -> None:
    if not data_dir.exists():
        return
    if not data_dir.is_dir():
        raise RestoreRefused(f"{data_dir} exists and is not a directory")
    if any(data_dir.iterdir()):
        raise RestoreRefused(
            f"{data_dir} is not empty; restore makes a new node in a new directory"
        )


def _extract(source: Path, database: Path) -> BackupHeader:
    """Write the backup's database to `database` while checking the whole file."""
    verifier = BackupVerifier()
    with source.open("rb") as backup, database.open("xb") as output:
        while chunk := backup.read(READ_CHUNK_BYTES):
            for part in verifier.feed(chunk):
                output.write(part)
        header = verifier.finish()
        output.flush()
        os.fsync(output.fileno())
    os.chmod(database, 0o600)
    return header


def _make_standalone(data_dir: Path) -> tuple[int, int]:
    """A new identity and the RESET entry (see the module docstring)."""
    node_id = secrets.randbelow(NODE_ID_MAX) + 1
    storage = Storage.open(data_dir)
    try:
        last_index = storage.last_index()
        hard_state = storage.hard_state()
        if hard_state.commit != last_index:  # a backup holds its committed prefix only
            raise BackupCorrupted(
                f"its log ends at {last_index} but only {hard_state.commit} is committed"
            )
        term = hard_state.term + 1
        reset = Entry(
            last_index + 1,
            term,
            ENTRY_TYPE_MEMBERSHIP,
            ConfChange(ConfChangeKind.RESET, node_id).encode(),
        )
        meta = {META_NODE_ID: str(node_id).encode(), **cluster_meta(0, b"")}
        batch = WriteBatch(
            entries=[reset], hard_state=HardState(term, node_id, last_index + 1), meta=meta
        )
        storage.submit(batch, timeout_s=None).result()
    finally:
        storage.close()
    return node_id, last_index + 1


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        with contextlib.suppress(OSError):
            os.close(descriptor)
