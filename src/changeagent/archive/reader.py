"""Reading an archive back (`changeagent archive ls|cat`), also while a node writes it
and from a copy made with ordinary tools.

Only what the records say counts: a manifest line cut by a crash is ignored, and of
the open segment only the `bytes` its record gives are read (a longer file holds an
append not yet recorded). Every segment read is checked against its SHA-256 before
a line of it is returned, and its lines against its record (count, ids in order
within first..last). A segment closed (renamed) by the writer between the listing
and the read is found under its closed name: closing never changes its bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from changeagent.archive.format import (
    MANIFEST,
    OPEN_STATE,
    ArchiveCorrupt,
    ArchiveError,
    Segment,
    closed_glob,
    parse_manifest,
)


@dataclass(frozen=True, slots=True)
class ArchiveListing:
    """The closed segments, in order, then the open one (if any)."""

    closed: list[Segment]
    open: Segment | None

    @property
    def segments(self) -> list[Segment]:
        return [*self.closed, self.open] if self.open is not None else list(self.closed)


def read_listing(directory: Path) -> ArchiveListing:
    """What the directory's records list (nothing for an empty directory)."""
    if not directory.is_dir():
        raise ArchiveError(f"{directory} is not a directory")
    try:
        closed, _ = parse_manifest((directory / MANIFEST).read_bytes())
    except FileNotFoundError:
        closed = []
    try:
        state: Segment | None = Segment.from_json((directory / OPEN_STATE).read_bytes().strip())
    except FileNotFoundError:
        state = None
    if state is not None and closed and state.first <= closed[-1].last:
        state = None  # closed meanwhile (or the writer's close was cut short): listed
    return ArchiveListing(closed, state)


def segment_data(directory: Path, segment: Segment) -> bytes:
    """The segment's recorded bytes, checked against its SHA-256."""
    path = directory / segment.file
    try:
        data = _read_prefix(path, segment.size_bytes)
    except FileNotFoundError:
        renamed = sorted(directory.glob(closed_glob(segment.first)))
        if not renamed or renamed[0].name == segment.file:
            raise ArchiveCorrupt(f"{segment.file} is missing") from None
        data = _read_prefix(renamed[0], segment.size_bytes)
    if len(data) < segment.size_bytes:
        raise ArchiveCorrupt(
            f"{segment.file} has {len(data)} bytes; its record says {segment.size_bytes}"
        )
    if hashlib.sha256(data).hexdigest() != segment.sha256:
        raise ArchiveCorrupt(f"{segment.file} does not match its SHA-256")
    return data


def _read_prefix(path: Path, size: int) -> bytes:
    with path.open("rb") as file:
        return file.read(size)


def segment_changes(directory: Path, segment: Segment) -> Iterator[tuple[int, bytes]]:
    """The segment's (`_id`, stored bytes), checked against its record."""
    data = segment_data(directory, segment)
    count = 0
    previous = segment.first - 1
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            for line in stream:
                body = line.rstrip(b"\n")
                change_id = _change_id(body, segment)
                if not previous < change_id <= segment.last:
                    raise ArchiveCorrupt(f"{segment.file}: _id {change_id} is out of order")
                previous = change_id
                count += 1
                yield change_id, body
    except (OSError, EOFError) as error:  # gzip's own errors
        raise ArchiveCorrupt(f"{segment.file}: {error}") from None
    if count != segment.count or previous != segment.last:
        raise ArchiveCorrupt(
            f"{segment.file} holds {count} changes up to {previous}; its record says "
            f"{segment.count} up to {segment.last}"
        )


def _change_id(body: bytes, segment: Segment) -> int:
    try:
        document = orjson.loads(body)
        change_id = document["_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ArchiveCorrupt(f"{segment.file}: a line is not a change: {body[:100]!r}") from None
    if not isinstance(change_id, int):
        raise ArchiveCorrupt(f"{segment.file}: a line is not a change: {body[:100]!r}")
    return change_id


def verify_segment(directory: Path, segment: Segment) -> None:
    """Read the whole segment: ArchiveCorrupt when anything disagrees with its record."""
    for _ in segment_changes(directory, segment):
        pass


def read_changes(
    directory: Path, since: int = 0, tags: Sequence[str] = (), type: int | None = None
) -> Iterator[dict[str, Any]]:
    """Every archived change after `since` in `_id` order, matching any of `tags`
    (when given) and `type` (when given), as parsed JSON. Segments that end at or
    before `since` are not opened."""
    wanted_tags = frozenset(tags)
    for segment in read_listing(directory).segments:
        if segment.last <= since:
            continue
        for change_id, body in segment_changes(directory, segment):
            if change_id <= since:
                continue
            document: dict[str, Any] = orjson.loads(body)
            if type is not None and document.get("type", 0) != type:
                continue
            if wanted_tags and wanted_tags.isdisjoint(document.get("tags") or ()):
                continue
            yield document
