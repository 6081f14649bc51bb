"""The commit index noted between durable writes, without an fsync.

Raft's commit index is volatile (§5.3), but a node that applied and served
entries must not show fewer after a crash of its process (a client's reads
would go backwards). Writing the hard state with an fsync each time only the
commit index moved would cost a second fsync per write, so, like etcd (whose
WAL syncs a hard state only when entries, term or vote changed), the commit
index alone goes to a small file with a plain write: it survives a process
crash through the page cache; after a power loss it may be older, which is
safe (every value in it was committed). A checksum guards against a torn write.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

FILE_NAME = "commit-index"
_RECORD = struct.Struct(">QI")  # index, crc32 of the index bytes


class CommitHint:
    """One 12-byte record at offset 0, overwritten in place."""

    def __init__(self, data_dir: Path) -> None:
        self._fd = os.open(data_dir / FILE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        self.noted = self.read()

    def read(self) -> int:
        """The noted index, or 0 when none or the record is torn."""
        record = os.pread(self._fd, _RECORD.size, 0)
        if len(record) != _RECORD.size:
            return 0
        index, crc = _RECORD.unpack(record)
        return int(index) if zlib.crc32(record[:8]) == crc else 0

    def note(self, index: int) -> None:
        packed = struct.pack(">Q", index)
        os.pwrite(self._fd, packed + struct.pack(">I", zlib.crc32(packed)), 0)
        self.noted = index

    def close(self) -> None:
        os.close(self._fd)
