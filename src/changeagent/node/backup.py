"""Online backups of this node's committed log (GET /backup), one at a time.

`NodeBackups.session()` makes the copy (`storage.backup.copy_committed`, on a
worker thread) in a temporary file in the data directory, yields it with the
header that describes it, and removes the file when the caller is done, also
after an error or a client that went away. A second backup while one runs is a
Conflict (409): a copy costs as much disk as the database, and two at once would
only compete for the disk.

The cut is this node's applied index, read before the copy starts: every entry
up to it is committed and durable here, so the copy holds it (see
`storage/backup.py` for what else it proves committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from changeagent.backup_format import BackupHeader
from changeagent.ids import format_id
from changeagent.node.errors import Conflict, NotAvailable
from changeagent.node.identity import META_CLUSTER_SECRET
from changeagent.node.replica import Replica
from changeagent.storage import schema
from changeagent.storage.backup import copy_committed
from changeagent.storage.errors import StorageError
from changeagent.version import package_version

log = logging.getLogger(__name__)

TEMPORARY_PREFIX = "backup-"
TEMPORARY_SUFFIX = ".db.tmp"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BackupCopy:
    """A finished copy: the database file to stream and the header to put first."""

    path: Path
    header: BackupHeader


class NodeBackups:
    """At most one backup at a time (see the module docstring)."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        self._running = False

    @contextlib.asynccontextmanager
    async def session(self, verify: bool = True) -> AsyncIterator[BackupCopy]:
        """A committed copy of the log, removed when the block ends; `verify=False`
        leaves the rows' checksums to whoever reads the copy (a seed)."""
        if self._running:
            raise Conflict("a backup of this node is running; retry once it has finished")
        replica = self._replica
        if replica.failure is not None:
            raise NotAvailable(f"this node stopped serving: {replica.failure}")
        self._running = True
        data_dir = replica.storage.data_dir
        path = data_dir / f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}{TEMPORARY_SUFFIX}"
        try:
            await _in_thread(remove_leftovers, data_dir)
            applied = replica.applied.index
            started = time.monotonic()
            try:
                info = await _in_thread(
                    copy_committed, data_dir, path, applied, (META_CLUSTER_SECRET,), verify
                )
            except (StorageError, OSError) as error:  # e.g. the disk is full
                raise NotAvailable(f"the backup copy failed: {error}") from None
            header = BackupHeader(
                created_ns=time.time_ns(),
                node_id=format_id(replica.node_id),
                cluster_id=format_id(replica.identity.cluster_id),
                commit_index=info.commit_index,
                first_index=info.first_index,
                changes=info.changes,
                first_change_id=info.first_change_id,
                last_change_id=info.last_change_id,
                database_bytes=info.database_bytes,
                schema_version=schema.SCHEMA_VERSION,
                software_version=package_version(),
            )
            log.info(
                "backup: copied %d changes up to index %d (%d bytes) in %.2f s",
                info.changes,
                info.commit_index,
                info.database_bytes,
                time.monotonic() - started,
            )
            yield BackupCopy(path, header)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._running = False


def remove_leftovers(
    data_dir: Path, prefix: str = TEMPORARY_PREFIX, suffix: str = TEMPORARY_SUFFIX
) -> None:
    """Temporary files (backup copies by default; seeds) a killed process left behind
    (none while one is in use: the caller holds the only session, and the data
    directory has one process)."""
    for path in data_dir.glob(f"{prefix}*{suffix}"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _in_thread(function: Callable[..., T], *arguments: object) -> T:
    """Run `function` on a worker thread; if the caller is cancelled (the client went
    away), wait for the thread anyway, so the temporary file is not removed (or a
    second backup started) while the thread still writes it."""
    task = asyncio.ensure_future(asyncio.to_thread(function, *arguments))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
