"""The archive directory's names and records (see the package docstring)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

MANIFEST = "manifest.jsonl"
OPEN_STATE = "open.json"
LOCK = "LOCK"
CLOSED_GLOB = "changes-*.jsonl.gz"
OPEN_GLOB = "open-*.jsonl.gz"
TEMPORARY_PREFIX = ".tmp-"
ID_DIGITS = 20


class ArchiveError(Exception):
    """The archive cannot be written or read; the message says why, for people."""


class ArchiveCorrupt(ArchiveError):
    """The directory's contents contradict each other or their checksums."""


class ArchiveInUse(ArchiveError):
    """Another process holds the archive directory's lock."""


def closed_name(first: int, last: int) -> str:
    return f"changes-{first:0{ID_DIGITS}d}-{last:0{ID_DIGITS}d}.jsonl.gz"


def closed_glob(first: int) -> str:
    """The closed name of the segment that starts at `first`, whatever its last id."""
    return f"changes-{first:0{ID_DIGITS}d}-*.jsonl.gz"


def open_name(first: int) -> str:
    return f"open-{first:0{ID_DIGITS}d}.jsonl.gz"


FILE_MODE = 0o600  # the archive holds the changes: as private as the data directory


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment's record. Invariants: first <= last, count >= 1, the file holds
    exactly `size_bytes` bytes whose SHA-256 is `sha256` (for the open segment: its
    first `size_bytes` bytes; a longer file has a torn append after them)."""

    file: str
    first: int
    last: int
    count: int
    size_bytes: int  # "bytes" in JSON
    sha256: str
    last_digest: str  # SHA-256 of the last change's stored bytes
    created_ns: int  # when its first change was archived

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "file": self.file,
                "first": self.first,
                "last": self.last,
                "count": self.count,
                "bytes": self.size_bytes,
                "sha256": self.sha256,
                "lastDigest": self.last_digest,
                "createdNs": self.created_ns,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Segment:
        """Parse a record; ArchiveCorrupt when it is not one."""
        try:
            document: Any = orjson.loads(data)
            segment = cls(
                file=str(document["file"]),
                first=int(document["first"]),
                last=int(document["last"]),
                count=int(document["count"]),
                size_bytes=int(document["bytes"]),
                sha256=str(document["sha256"]),
                last_digest=str(document["lastDigest"]),
                created_ns=int(document["createdNs"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ArchiveCorrupt(f"not a segment record ({error}): {data[:200]!r}") from None
        if not 1 <= segment.first <= segment.last or segment.count < 1 or "/" in segment.file:
            raise ArchiveCorrupt(f"an impossible segment record: {data[:200]!r}")
        return segment


def parse_manifest(data: bytes) -> tuple[list[Segment], int]:
    """The closed segments a manifest lists, and the length of its intact part: a
    last line without its newline (an append cut by a crash) is not part of it.
    Ids must increase from one segment to the next."""
    segments: list[Segment] = []
    intact = data.rfind(b"\n") + 1
    for line in data[:intact].splitlines():
        segment = Segment.from_json(line)
        if segments and segment.first <= segments[-1].last:
            raise ArchiveCorrupt(f"{MANIFEST}: {segment.file} does not follow {segments[-1].file}")
        segments.append(segment)
    return segments, intact
