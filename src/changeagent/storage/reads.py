"""SQLite reads, each verifying the checksum of every row it returns.

These functions take a connection and run on the calling thread; `Storage`
decides when the in-memory tail can answer instead, and retries a read that
raced with a truncation or compaction.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import sqlite3
from collections.abc import Generator, Iterator, Sequence

from changeagent.raft.entry import Entry
from changeagent.storage.errors import CorruptionError
from changeagent.storage.records import entry_crc

Row = tuple[int, int, int, str, bytes, int]  # idx, term, type, key, body, crc

_COLUMNS = "idx, term, type, key, body, crc"
_ENTRY_AT = f"SELECT {_COLUMNS} FROM entries WHERE idx = ?"
_INTERNAL_BETWEEN = (
    f"SELECT {_COLUMNS} FROM entries WHERE type < 0 AND idx >= ? AND idx < ? ORDER BY idx"
)
_ENTRIES_FROM = f"SELECT {_COLUMNS} FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx"
# Unary plus on `type`: walk the primary key, never the type index, for these.
_CHANGES_AFTER = (
    f"SELECT {_COLUMNS} FROM entries WHERE idx > ? AND idx <= ? AND +type >= 0 ORDER BY idx LIMIT ?"
)
_CHANGES_OF_TYPE_AFTER = (
    f"SELECT {_COLUMNS} FROM entries WHERE type = ? AND idx > ? AND idx <= ? ORDER BY idx LIMIT ?"
)
_TAGGED_AFTER = "SELECT idx FROM tags WHERE tag = ? AND idx > ? AND idx <= ? ORDER BY idx LIMIT ?"
# Seeks for the tag-and-type intersection: each walks one index from a position on.
_TAGGED_FROM = "SELECT idx FROM tags WHERE tag = ? AND idx >= ? AND idx <= ? ORDER BY idx LIMIT ?"
_OF_TYPE_FROM = (
    "SELECT idx FROM entries WHERE type = ? AND idx >= ? AND idx <= ? ORDER BY idx LIMIT ?"
)
_TYPE_AT_OR_BELOW = "SELECT 1 FROM entries WHERE type = ? AND idx <= ? LIMIT 1"
_TAG_AT_OR_BELOW = "SELECT idx FROM tags WHERE tag = ? AND idx <= ? ORDER BY idx LIMIT ?"
_KEY_INDEX = "SELECT idx FROM idempotency WHERE key = ?"
_COUNT_USER_AFTER = "SELECT count(*) FROM entries WHERE idx > ? AND +type >= 0"
NTH_NEWEST_USER = (
    "SELECT idx FROM entries WHERE idx <= ? AND +type >= 0 ORDER BY idx DESC LIMIT 1 OFFSET ?"
)
_FIRST_RECENT_USER = (
    "SELECT idx FROM entries WHERE +type >= 0 AND ts >= ? AND idx <= ? ORDER BY idx LIMIT 1"
)
_NEWEST_FIRST = f"SELECT {_COLUMNS} FROM entries WHERE idx >= ? ORDER BY idx DESC"

_IN_CHUNK = 500  # indices per `idx IN (...)` query; fixed, so the statement is cached
_TAG_CHUNK_MIN = 64
_SEEK_CHUNK = 256  # indices fetched per seek of the tag-and-type intersection


class RowMissing(Exception):
    """An index the log should hold has no row: corruption, or a race with a removal."""

    def __init__(self, index: int) -> None:
        super().__init__(f"entry {index} is missing")
        self.index = index


def verify(row: Row) -> Row:
    """Return the row if its checksum matches; raise CorruptionError naming it otherwise."""
    index, term, entry_type, key, body, crc = row
    if entry_crc(index, term, entry_type, key, body) != crc:
        raise CorruptionError(f"checksum mismatch in entry {index}", index=index)
    return row


def row_entry(row: Row) -> Entry:
    index, term, entry_type, key, body, _ = row
    return Entry(index, term, entry_type, body, key)


def entry_at(connection: sqlite3.Connection, index: int) -> Entry | None:
    row = connection.execute(_ENTRY_AT, (index,)).fetchone()
    return None if row is None else row_entry(verify(row))


def internal_between(connection: sqlite3.Connection, low: int, high: int) -> list[Entry]:
    """Entries of negative type in [low, high), through the type index."""
    rows = connection.execute(_INTERNAL_BETWEEN, (low, high)).fetchall()
    return [row_entry(verify(row)) for row in rows]


def entries_between(
    connection: sqlite3.Connection, low: int, high: int, max_bytes: int
) -> list[Entry]:
    """Entries [low, high), at least one, then only while the total stays <= max_bytes."""
    result: list[Entry] = []
    total_bytes = 0
    cursor = connection.execute(_ENTRIES_FROM, (low, high))
    expected = low
    while expected < high:
        rows = cursor.fetchmany(64)
        if not rows:
            raise RowMissing(expected)
        for row in rows:
            if row[0] != expected:
                raise RowMissing(expected)
            entry = row_entry(verify(row))
            total_bytes += len(entry.data)
            if result and total_bytes > max_bytes:
                cursor.close()
                return result
            result.append(entry)
            expected += 1
    cursor.close()
    return result


def changes_after(
    connection: sqlite3.Connection,
    since: int,
    want: int,
    tags: Sequence[str],
    entry_type: int | None,
    upto: int,
) -> list[tuple[int, bytes]]:
    """Up to `want` matching user changes in (since, upto], as (index, body), in order."""
    if want <= 0 or since >= upto:
        return []
    if tags:
        return _tagged_changes_after(connection, since, want, tags, entry_type, upto)
    if entry_type is None:
        rows = connection.execute(_CHANGES_AFTER, (since, upto, want)).fetchall()
    else:
        rows = connection.execute(
            _CHANGES_OF_TYPE_AFTER, (entry_type, since, upto, want)
        ).fetchall()
    return [(row[0], row[4]) for row in map(verify, rows)]


def _tagged_changes_after(
    connection: sqlite3.Connection,
    since: int,
    want: int,
    tags: Sequence[str],
    entry_type: int | None,
    upto: int,
) -> list[tuple[int, bytes]]:
    """Merge each tag's index range (one index seek per chunk), then fetch the rows.

    With a type too, the candidates are the intersection of the tags' and the type's
    indexes (`_tagged_of_type`), so rows of the tag but another type are never read.
    """
    candidates: Iterator[int]
    if entry_type is None:
        chunk = max(want, _TAG_CHUNK_MIN)
        streams = [_tag_stream(connection, tag, since, upto, chunk) for tag in tags]
        candidates = _distinct(heapq.merge(*streams))
    else:
        candidates = _tagged_of_type(connection, tags, entry_type, since, upto)
    result: list[tuple[int, bytes]] = []
    while len(result) < want:
        count = min(want - len(result), _IN_CHUNK)
        wanted = list(itertools.islice(candidates, count))
        if not wanted:
            break
        for row in _rows_at(connection, wanted):
            if entry_type is None or row[2] == entry_type:
                result.append((row[0], row[4]))
    return result[:want]


def _tag_stream(
    connection: sqlite3.Connection, tag: str, since: int, upto: int, chunk: int
) -> Iterator[int]:
    low = since
    while True:
        rows = connection.execute(_TAGGED_AFTER, (tag, low, upto, chunk)).fetchall()
        for (index,) in rows:
            yield index
        if len(rows) < chunk:
            return
        low = rows[-1][0]


def _distinct(indices: Iterator[int]) -> Iterator[int]:
    previous = -1
    for index in indices:
        if index != previous:
            yield index
            previous = index


def _rows_at(connection: sqlite3.Connection, indices: list[int]) -> list[Row]:
    """Verified rows for `indices` (sorted, distinct), in order; all must exist."""
    padded = indices + [-1] * (_IN_CHUNK - len(indices))
    placeholders = ",".join("?" * _IN_CHUNK)
    rows = connection.execute(
        f"SELECT {_COLUMNS} FROM entries WHERE idx IN ({placeholders}) ORDER BY idx", padded
    ).fetchall()
    if len(rows) != len(indices):
        found = {row[0] for row in rows}
        raise RowMissing(next(index for index in indices if index not in found))
    return [verify(row) for row in rows]


def matching_at_or_below(
    connection: sqlite3.Connection, since: int, tags: Sequence[str], entry_type: int | None
) -> bool:
    """Whether any retained user change at or below `since` matches the filter.

    One indexed LIMIT 1 seek per tag, or for the type; with both, the intersection of
    the two indexes (`_tagged_of_type`): a type that no change of the tag has, the
    common case for a long-poll waiting for it, costs one or two seeks. The match
    found there is confirmed by its verified row.
    """
    if tags and entry_type is not None:
        found = next(_tagged_of_type(connection, tags, entry_type, 0, since), None)
        return found is not None and _rows_at(connection, [found])[0][2] == entry_type
    if tags:
        return any(connection.execute(_TAG_AT_OR_BELOW, (tag, since, 1)).fetchall() for tag in tags)
    if entry_type is not None:
        return connection.execute(_TYPE_AT_OR_BELOW, (entry_type, since)).fetchone() is not None
    raise ValueError("an unfiltered query is answered from the first user index")


class _IndexRange:
    """The sorted indices one index holds for a key within [.., high], read by seeks.

    A seek fetches the next `_SEEK_CHUNK` indices from its position and answers later
    seeks inside them from memory, so a walk costs one query per chunk or per jump.
    """

    def __init__(self, connection: sqlite3.Connection, query: str, key: object, high: int) -> None:
        self._connection = connection
        self._query = query
        self._key = key
        self._high = high
        self._indices: list[int] = []
        self._low = 1  # every index in [_low, _covered] the range holds is in _indices
        self._covered = 0

    def seek(self, low: int) -> int | None:
        """The first index >= low, or None."""
        if not self._low <= low <= self._covered:
            self._fetch(low)
        position = bisect.bisect_left(self._indices, low)
        return self._indices[position] if position < len(self._indices) else None

    def _fetch(self, low: int) -> None:
        rows = self._connection.execute(
            self._query, (self._key, low, self._high, _SEEK_CHUNK)
        ).fetchall()
        self._indices = [row[0] for row in rows]
        self._low = low
        self._covered = self._indices[-1] if len(rows) == _SEEK_CHUNK else self._high


def _tagged_of_type(
    connection: sqlite3.Connection, tags: Sequence[str], entry_type: int, since: int, upto: int
) -> Iterator[int]:
    """Indices in (since, upto] of user changes with any of `tags` and type `entry_type`.

    A leapfrog join of the tags index and the type index: each side seeks to the
    other's candidate, so neither is read further than the other reaches.
    """
    tag_ranges = [_IndexRange(connection, _TAGGED_FROM, tag, upto) for tag in tags]
    of_type = _IndexRange(connection, _OF_TYPE_FROM, entry_type, upto)

    def tagged(low: int) -> int | None:
        found = [index for index in (r.seek(low) for r in tag_ranges) if index is not None]
        return min(found, default=None)

    candidate = of_type.seek(since + 1)
    while candidate is not None:
        other = tagged(candidate)
        if other is None:
            return
        if other == candidate:
            yield candidate
            candidate = of_type.seek(candidate + 1)
        else:
            candidate = of_type.seek(other)


def idempotency_index(connection: sqlite3.Connection, key: str) -> int | None:
    row = connection.execute(_KEY_INDEX, (key,)).fetchone()
    return None if row is None else int(row[0])


def count_user_changes_after(connection: sqlite3.Connection, index: int) -> int:
    return int(connection.execute(_COUNT_USER_AFTER, (index,)).fetchone()[0])


def purge_point(
    connection: sqlite3.Connection, min_records: int, older_than_ts_ns: int, upto: int
) -> int:
    """The highest index P <= upto such that every user change <= P has ts < cutoff
    and at least `min_records` user changes lie in (P, upto]; 0 if there is none."""
    point = upto
    if min_records > 0:
        row = connection.execute(NTH_NEWEST_USER, (upto, min_records - 1)).fetchone()
        if row is None:
            return 0
        point = min(point, int(row[0]) - 1)
    row = connection.execute(_FIRST_RECENT_USER, (older_than_ts_ns, upto)).fetchone()
    if row is not None:
        point = min(point, int(row[0]) - 1)
    return max(point, 0)


def newest_entries(
    connection: sqlite3.Connection, first_index: int
) -> Generator[Entry, None, None]:
    """Verified entries from the newest back to `first_index`; the caller stops early."""
    cursor = connection.execute(_NEWEST_FIRST, (first_index,))
    try:
        while True:
            rows = cursor.fetchmany(256)
            if not rows:
                return
            for row in rows:
                yield row_entry(verify(row))
    finally:
        cursor.close()
