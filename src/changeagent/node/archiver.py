"""Archiver: with `archiveDir` set, what a purge removes is archived before it goes.

What to purge stays the pure code's decision (the leader's PURGE entry,
`ReplicatedState.apply`, `plan_compaction`); this is the I/O around it. When a
purge to index P is applied, `Replica._purge_applied` asks `compactable(P)`: with
no archive, P; otherwise how far the archive has got (`archived_through`), and the
rest is handed to this task. It archives, on a worker thread, every change in
(max(what the archive holds, the compaction point), P] through `ArchiveWriter`
(durable when it returns), then asks the driver to run the after-advance step
again, which compacts to P. So a crash anywhere leaves either changes that are
still in the log (archived or not), or changes that are archived and gone:

- crash before the archive is durable: the writer's recovery drops the unrecorded
  bytes; the PURGE entry is committed, so the restarted node applies it again
  (`Replica.start`) and archives those changes again;
- crash after, before the compaction: the restarted node finds them archived (ids
  up to the archive's last) and only compacts;
- the same holds for a purge applied again after a restart or a leader's
  snapshot: only ids above the archive's last are written.

The archive's last change is checked against the log whenever the log still holds
it (its stored bytes must have the archive's `lastDigest`): a directory written by
another log (another cluster, a data directory wiped and joined elsewhere) is
refused rather than taken as proof that this log's changes are archived.

A failure to archive (disk full, permissions, another process's lock, a damaged
archive) never lets the purge delete unarchived changes: the compaction waits,
the error is logged (once per distinct error) and `failure` shows it, and the
archive is retried with a backoff (1 s doubling to 60 s), so the node goes on
serving and the purge completes once the cause is fixed. A member whose log was
replaced by a leader's snapshot never held what it skipped: its archive has a gap
there (other members' archives have it).

For tests only: with CHANGEAGENT_TEST_KILL_AFTER_ARCHIVE=1 in its environment, the
process kills itself with SIGKILL right after an archive that wrote changes became
durable and before the compaction (kill -9 between archive and purge).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from changeagent.archive import ArchiveError, ArchiveWriter
from changeagent.archive.format import digest
from changeagent.storage import Storage

log = logging.getLogger(__name__)

KILL_AFTER_ARCHIVE_ENVIRONMENT = "CHANGEAGENT_TEST_KILL_AFTER_ARCHIVE"
PAGE_CHANGES = 1000
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 60.0


@dataclass(frozen=True, slots=True)
class ArchiveStatus:
    """What /diagnostics/raft shows of the archive."""

    directory: str
    archived_through: int  # every change up to this index is archived (this process)
    failure: str | None  # why the last attempt failed, while it does


def resolve_archive_dir(setting: str, data_dir: Path) -> Path | None:
    """Where this member archives: `archiveDir` as is when absolute, else inside its
    data directory (so that members sharing a machine never share an archive)."""
    if not setting:
        return None
    path = Path(setting).expanduser()
    return path if path.is_absolute() else data_dir / path


class Archiver:
    """The archive task of one node (see the module docstring)."""

    def __init__(self, storage: Storage, wake: Callable[[], None]) -> None:
        self._storage = storage
        self._wake = wake  # the driver runs the after-advance step (compaction) again
        self.directory: Path | None = None
        self.archived_through = 0  # every change up to this index is archived
        self.failure: str | None = None
        self._target = 0  # archive every change up to this index
        self._wanted = asyncio.Event()
        self._reconfigured = asyncio.Event()  # ends a failure's backoff at once
        self._writer: ArchiveWriter | None = None
        self._writer_lock = threading.Lock()  # one job at a time; close waits for it
        self._stopping = threading.Event()  # set by close: a job stops after its page
        self._kill_after_archive = os.environ.get(KILL_AFTER_ARCHIVE_ENVIRONMENT) == "1"

    def status(self) -> ArchiveStatus | None:
        if self.directory is None:
            return None
        return ArchiveStatus(str(self.directory), self.archived_through, self.failure)

    def configure(self, setting: str) -> None:
        """The replicated `archiveDir` (at start, and whenever the settings change)."""
        directory = resolve_archive_dir(setting, self._storage.data_dir)
        if directory != self.directory:
            log.info("archive of purged changes: %s", directory or "off")
            self.directory = directory
            self._wanted.set()
            self._reconfigured.set()

    def forget_progress(self) -> None:
        """The log was discarded (joining a cluster): indices start over."""
        self.archived_through = self._target = 0

    def compactable(self, index: int) -> int:
        """How far a purge to `index` may compact now. Without an archive, all of it;
        with one, what is archived, and the rest is asked of the task."""
        if self.directory is None:
            return index
        if self.archived_through < index:
            self._target = max(self._target, index)
            self._wanted.set()
        return min(index, self.archived_through)

    async def run(self) -> None:
        """Supervised: archive what purges ask for, one job at a time, retrying failures."""
        retry_s = RETRY_INITIAL_S
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while self.directory is not None and self._target > self.archived_through:
                directory, target = self.directory, self._target
                try:
                    written = await asyncio.to_thread(self._archive, directory, target)
                except (OSError, ArchiveError) as error:
                    self._failed(directory, error)
                    self._reconfigured.clear()
                    with contextlib.suppress(TimeoutError):  # a new archiveDir retries now
                        await asyncio.wait_for(self._reconfigured.wait(), retry_s)
                    retry_s = min(2 * retry_s, RETRY_MAX_S)
                    continue
                retry_s = RETRY_INITIAL_S
                if self.failure is not None:
                    log.info("archive: %s works again", directory)
                    self.failure = None
                if written and self._kill_after_archive:
                    log.warning("archive: %s set: SIGKILL now", KILL_AFTER_ARCHIVE_ENVIRONMENT)
                    os.kill(os.getpid(), signal.SIGKILL)
                self.archived_through = max(self.archived_through, target)
                self._wake()
            if self.directory is None:
                await asyncio.to_thread(self._release)

    def _failed(self, directory: Path, error: BaseException) -> None:
        reason = f"cannot archive purged changes to {directory}: {error}"
        if reason != self.failure:
            log.error("archive: %s; the purge waits and is retried", reason)
        self.failure = reason

    def close(self) -> None:
        """At stop: end a job in progress after its current page (what it wrote so far
        is recorded; the rest waits for the next start) and release the directory."""
        self._stopping.set()
        self._release()

    def _release(self) -> None:
        with self._writer_lock:  # waits for a job in progress
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # The job, on a worker thread -------------------------------------------------

    def _archive(self, directory: Path, target: int) -> int:
        """Archive every change up to `target` not yet archived; how many were written."""
        with self._writer_lock:
            writer = self._writer
            if writer is not None and writer.directory != directory:
                writer.close()
                writer = self._writer = None
            if writer is None:
                writer = self._writer = ArchiveWriter.open(directory)
            try:
                return self._append(writer, target)
            except BaseException:
                writer.close()  # the next attempt opens it again, which recovers
                self._writer = None
                raise

    def _append(self, writer: ArchiveWriter, target: int) -> int:
        compacted = self._storage.snapshot().index
        if writer.last_id > compacted:
            self._check_same_log(writer)
        return writer.append(self._changes(max(writer.last_id, compacted), target))

    def _check_same_log(self, writer: ArchiveWriter) -> None:
        stored = self._storage.get_change(writer.last_id)
        if stored is None or digest(stored) != writer.last_digest:
            raise ArchiveError(
                f"{writer.directory} holds another log's history: its change "
                f"{writer.last_id} is not this node's; set archiveDir to another directory"
            )

    def _changes(self, since: int, upto: int) -> Iterator[tuple[int, bytes]]:
        while since < upto:
            if self._stopping.is_set():
                raise ArchiveError("the node is stopping")
            items = self._storage.change_items(since, PAGE_CHANGES, upto)
            if not items:
                return
            yield from items
            since = items[-1][0]
