"""Saving a backup (GET /backup) to a file, never leaving a half-written one.

The bytes go to a new temporary file next to the target while
`backup_format.BackupVerifier` checks them on the way; only a complete file whose
length and SHA-256 trailer match is flushed, fsynced, renamed over the target
and made durable (the directory is fsynced too). Anything else removes the
temporary file, and the target is untouched: an earlier backup there survives a
failed one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from changeagent.backup_format import BackupError, BackupVerifier
from changeagent.client.errors import InvalidBackup
from changeagent.client.model import Backup

# How long one read of the answer may wait: the server copies the whole database
# before its first byte, which takes seconds per gigabyte.
BACKUP_READ_TIMEOUT_S = 600.0


class BackupFile:
    """One attempt: `write` every chunk, then `commit` (or `discard`)."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        directory = self.target.parent
        descriptor, name = tempfile.mkstemp(
            prefix=f".{self.target.name}.", suffix=".partial", dir=directory
        )
        self._temporary = Path(name)
        self._file: BinaryIO = os.fdopen(descriptor, "wb")
        self._verifier = BackupVerifier()

    def write(self, chunk: bytes) -> None:
        try:
            self._verifier.feed(chunk)
        except BackupError as error:
            raise InvalidBackup(f"the server's answer is not a backup: {error}") from None
        self._file.write(chunk)

    def commit(self) -> Backup:
        """Check, make durable, and rename over the target."""
        try:
            header = self._verifier.finish()
        except BackupError as error:
            raise InvalidBackup(f"the backup received is unusable: {error}") from None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temporary, self.target)
        _fsync_directory(self.target.parent)
        return Backup(
            path=str(self.target),
            bytes=self._verifier.bytes_seen,
            sha256=self._verifier.sha256,
            node_id=header.node_id,
            cluster_id=header.cluster_id,
            commit_index=header.commit_index,
            changes=header.changes,
            first_change_id=header.first_change_id,
            last_change_id=header.last_change_id,
            created_ns=header.created_ns,
        )

    def discard(self) -> None:
        """Remove the temporary file (after a failure; harmless after commit)."""
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._temporary.unlink()


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path if str(path) else ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
