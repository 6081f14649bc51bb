"""ArchiveWriter: appends changes to the archive so that a crash at any point loses
nothing that was reported durable and duplicates nothing.

An append (`append`, in chunks of at most CHUNK_BYTES of changes):

1. one gzip member is appended to the open segment (created if there is none)
   and the file fsynced (and the directory, when the file is new);
2. `open.json`, the open segment's record (size, SHA-256, last `_id`), is replaced
   atomically: written to a temporary file, fsynced, renamed, directory fsynced.

Only then does `append` return, and only then may the caller purge. A crash
before 2 leaves bytes after the recorded size: recovery cuts them off, and since
the caller had not been told, it archives those changes again (the purge never
happened). So the recorded state is the truth, and changes count as archived
exactly when `open.json` (or the manifest) says so: nothing is lost or doubled.

Closing the open segment (when it reaches `segment_bytes_max`, or on the first
append after it is `segment_age_max_ns` old, so that low traffic still yields
closed segments to ship): rename it to `changes-<first>-<last>.jsonl.gz`, fsync the
directory, append its record to `manifest.jsonl` and fsync, remove `open.json` and
fsync the directory. Recovery finishes a close that a crash interrupted: a
renamed file whose record is missing from the manifest gets it (after checking its
size and SHA-256); an `open.json` whose segment the manifest already lists goes.

Other leftovers: an open segment file that no record names (a crash between
creating it and writing `open.json`: nothing in it was ever reported) is removed;
so are temporary files. One writer per directory: `LOCK` is held with flock.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from changeagent.archive.format import (
    FILE_MODE,
    LOCK,
    MANIFEST,
    OPEN_GLOB,
    OPEN_STATE,
    TEMPORARY_PREFIX,
    ArchiveCorrupt,
    ArchiveError,
    ArchiveInUse,
    Segment,
    closed_name,
    digest,
    open_name,
    parse_manifest,
)

SEGMENT_BYTES_MAX = 32 * 1024 * 1024  # compressed; ~1M typical changes
SEGMENT_AGE_MAX_NS = 3600 * 1_000_000_000
CHUNK_BYTES = 8 * 1024 * 1024  # uncompressed changes per gzip member (memory bound)
COMPRESS_LEVEL = 6


class ArchiveWriter:
    """Open with `ArchiveWriter.open(directory)` (recovers); `append`; `close`.
    Not thread-safe: one caller at a time (the node's archiver runs one job at a time).
    """

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        segment_bytes_max: int = SEGMENT_BYTES_MAX,
        segment_age_max_ns: int = SEGMENT_AGE_MAX_NS,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> ArchiveWriter:
        """Create the directory if needed (0700), lock it, and recover its state."""
        directory = Path(directory)
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
            _fsync_directory(directory.parent)
        lock_fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise ArchiveInUse(f"{directory} is in use by another process") from None
        try:
            writer = cls(directory, lock_fd, segment_bytes_max, segment_age_max_ns, clock_ns)
            writer._recover()
        except BaseException:
            os.close(lock_fd)
            raise
        return writer

    def __init__(
        self,
        directory: Path,
        lock_fd: int,
        segment_bytes_max: int,
        segment_age_max_ns: int,
        clock_ns: Callable[[], int],
    ) -> None:
        """Use `ArchiveWriter.open`."""
        self.directory = directory
        self._lock_fd = lock_fd
        self._segment_bytes_max = segment_bytes_max
        self._segment_age_max_ns = segment_age_max_ns
        self._clock_ns = clock_ns
        self.closed: list[Segment] = []  # as the manifest lists them
        self.open_segment: Segment | None = None
        self._open_hash = hashlib.sha256()  # of the open segment's recorded bytes
        self._broken = False  # a write failed: the state in memory may be wrong

    # What is archived --------------------------------------------------------------

    @property
    def last_id(self) -> int:
        """The newest archived change's `_id` (0 when none)."""
        newest = self._newest()
        return 0 if newest is None else newest.last

    @property
    def last_digest(self) -> str:
        """SHA-256 of the newest archived change's bytes ("" when none)."""
        newest = self._newest()
        return "" if newest is None else newest.last_digest

    def _newest(self) -> Segment | None:
        if self.open_segment is not None:
            return self.open_segment
        return self.closed[-1] if self.closed else None

    # Appending -----------------------------------------------------------------------

    def append(self, changes: Iterable[tuple[int, bytes]]) -> int:
        """Archive these (`_id`, stored bytes) durably, in order; every `_id` must be
        above `last_id`. Returns how many were archived. Durable when it returns.
        If it raises, the writer is unusable (ArchiveError on every call): close it
        and open the directory again, whose recovery finds what was recorded."""
        self._check_usable()
        try:
            return self._append(changes)
        except BaseException:
            self._broken = True
            raise

    def _check_usable(self) -> None:
        if self._broken:
            raise ArchiveError(f"{self.directory}: an earlier write failed; open it again")
        if self._lock_fd < 0:
            raise ArchiveError(f"{self.directory}: the writer is closed")

    def _append(self, changes: Iterable[tuple[int, bytes]]) -> int:
        chunk: list[tuple[int, bytes]] = []
        chunk_bytes = 0
        count = 0
        previous = self.last_id
        for change_id, body in changes:
            if change_id <= previous:
                raise ValueError(f"change {change_id} does not follow {previous}")
            if b"\n" in body:
                raise ValueError(f"change {change_id} spans lines")
            previous = change_id
            chunk.append((change_id, body))
            chunk_bytes += len(body) + 1
            if chunk_bytes >= CHUNK_BYTES:
                count += self._write(chunk)
                chunk, chunk_bytes = [], 0
        if chunk:
            count += self._write(chunk)
        return count

    def _write(self, chunk: list[tuple[int, bytes]]) -> int:
        """Steps 1 and 2 of the module docstring, then a close if the segment is full."""
        segment = self.open_segment
        now_ns = self._clock_ns()
        if segment is not None and now_ns - segment.created_ns >= self._segment_age_max_ns:
            self._close_open_segment()
            segment = None
        member = gzip.compress(
            b"".join(body + b"\n" for _, body in chunk), compresslevel=COMPRESS_LEVEL, mtime=0
        )
        if segment is None:
            first = chunk[0][0]
            segment = Segment(open_name(first), first, first, 0, 0, "", "", now_ns)
            hasher = hashlib.sha256()
        else:
            hasher = self._open_hash.copy()
        path = self.directory / segment.file
        with _open_private(path, append=segment.size_bytes > 0) as file:
            file.write(member)
            file.flush()
            os.fsync(file.fileno())
        if segment.size_bytes == 0:
            _fsync_directory(self.directory)  # the new file's name is durable too
        hasher.update(member)
        segment = replace(
            segment,
            last=chunk[-1][0],
            count=segment.count + len(chunk),
            size_bytes=segment.size_bytes + len(member),
            sha256=hasher.hexdigest(),
            last_digest=digest(chunk[-1][1]),
        )
        _replace_file(self.directory, OPEN_STATE, segment.to_json() + b"\n")
        self.open_segment, self._open_hash = segment, hasher
        if segment.size_bytes >= self._segment_bytes_max:
            self._close_open_segment()
        return len(chunk)

    def close_segment(self) -> None:
        """Close the open segment now (if any), e.g. before shipping everything."""
        self._check_usable()
        if self.open_segment is not None:
            try:
                self._close_open_segment()
            except BaseException:
                self._broken = True
                raise

    def _close_open_segment(self) -> None:
        segment = self.open_segment
        assert segment is not None
        closed = replace(segment, file=closed_name(segment.first, segment.last))
        os.rename(self.directory / segment.file, self.directory / closed.file)
        _fsync_directory(self.directory)
        self._record_closed(closed)

    def _record_closed(self, closed: Segment) -> None:
        """Append `closed` to the manifest, then forget the open segment."""
        with _open_private(self.directory / MANIFEST, append=True) as manifest:
            manifest.write(closed.to_json() + b"\n")
            manifest.flush()
            os.fsync(manifest.fileno())
        self.closed.append(closed)
        self.open_segment = None
        with contextlib.suppress(FileNotFoundError):
            (self.directory / OPEN_STATE).unlink()
        _fsync_directory(self.directory)

    def close(self) -> None:
        """Release the directory (the open segment stays open, for the next writer)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # Recovery ------------------------------------------------------------------------

    def _recover(self) -> None:
        self.closed = self._read_manifest()
        state = self._read_open_state()
        if state is not None:
            self._recover_open(state)
        self._remove_leftovers()

    def _read_manifest(self) -> list[Segment]:
        path = self.directory / MANIFEST
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        segments, intact = parse_manifest(data)
        if intact < len(data):  # an append cut by a crash: it never counted
            with path.open("r+b") as manifest:
                manifest.truncate(intact)
                os.fsync(manifest.fileno())
        return segments

    def _read_open_state(self) -> Segment | None:
        try:
            data = (self.directory / OPEN_STATE).read_bytes()
        except FileNotFoundError:
            return None
        return Segment.from_json(data.strip())  # written atomically: a bad one is corrupt

    def _recover_open(self, state: Segment) -> None:
        if self.closed and self.closed[-1].first >= state.first:
            # Closed and listed; only the removal of open.json was cut short.
            (self.directory / OPEN_STATE).unlink()
            _fsync_directory(self.directory)
            return
        if self.closed and state.first <= self.closed[-1].last:
            raise ArchiveCorrupt(f"{OPEN_STATE} overlaps {self.closed[-1].file}")
        path = self.directory / state.file
        renamed = self.directory / closed_name(state.first, state.last)
        if not path.exists() and renamed.exists():
            # Renamed to its closed name, record not yet in the manifest: finish the close.
            _check_file(renamed, state.size_bytes, state.sha256, exact=True)
            self._record_closed(replace(state, file=renamed.name))
            return
        self._open_hash = _check_file(path, state.size_bytes, state.sha256, exact=False)
        self.open_segment = state

    def _remove_leftovers(self) -> None:
        current = self.open_segment.file if self.open_segment is not None else None
        for path in self.directory.glob(OPEN_GLOB):
            if path.name != current:  # created, never recorded: nothing in it counted
                path.unlink()
        for path in self.directory.glob(TEMPORARY_PREFIX + "*"):
            path.unlink()


def _check_file(path: Path, size: int, sha256: str, *, exact: bool) -> hashlib._Hash:
    """The hash of the file's first `size` bytes, checked against `sha256`. A longer
    file is cut to `size` unless `exact` (its tail is an append never recorded)."""
    try:
        with path.open("r+b") as file:
            actual = os.fstat(file.fileno()).st_size
            if actual < size or (exact and actual != size):
                raise ArchiveCorrupt(f"{path.name} has {actual} bytes; its record says {size}")
            hasher = hashlib.sha256()
            left = size
            while left:
                block = file.read(min(left, 1024 * 1024))
                if not block:
                    raise ArchiveCorrupt(f"{path.name} ended early")
                hasher.update(block)
                left -= len(block)
            if hasher.hexdigest() != sha256:
                raise ArchiveCorrupt(f"{path.name} does not match its SHA-256")
            if actual > size:
                file.truncate(size)
                os.fsync(file.fileno())
    except FileNotFoundError:
        raise ArchiveCorrupt(f"{path.name} is missing") from None
    return hasher


def _replace_file(directory: Path, name: str, data: bytes) -> None:
    """Write `name` atomically and durably: temporary file, fsync, rename, fsync dir."""
    temporary = directory / f"{TEMPORARY_PREFIX}{name}"
    with _open_private(temporary, append=False) as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, directory / name)
    _fsync_directory(directory)


def _open_private(path: Path, *, append: bool) -> BinaryIO:
    """A file to write (created 0600), appended to or emptied first."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    return os.fdopen(os.open(path, flags, FILE_MODE), "ab" if append else "wb")


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
