"""A local SQLite copy of the change log (or of its filtered part): `Mirror`.

The file holds `changes(id INTEGER PRIMARY KEY, ts, type, tags, data)` and a one-row
`meta(last_id, tags, type, key_path, format)`; with `key_path`, also
`latest(key PRIMARY KEY, id, data)`, the newest change per value of that JSON path.
Every page of changes is written in one transaction together with `meta.last_id`,
so the file always holds a consistent prefix of the (filtered) log, and a mirror
killed at any moment resumes after `meta.last_id` with no gap and no duplicate. The
file is in WAL mode: other processes read it while the mirror writes. See
docs/MIRROR.md.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson

from changeagent.client.errors import ChangesMissed
from changeagent.client.model import Change
from changeagent.client.shells import Client

# The file layout's version, kept in meta.format: a file of another format is refused.
FORMAT = 1
# While the mirror is at or past the known end of the log, the end is asked again at
# most this often (one GET /diagnostics/raft), and only when someone watches progress.
END_REFRESH_S = 2.0
# How long a write waits for a lock held by another connection (a reader never holds
# one in WAL mode; a checkpoint or a vacuum by another process might).
BUSY_TIMEOUT_S = 30.0
# The WAL file is truncated back to this size after a checkpoint.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# The largest integer SQLite stores (a key outside it is skipped from `latest`).
INTEGER_MAX = 2**63 - 1

SCHEMA = (
    "CREATE TABLE changes("
    "id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, type INTEGER NOT NULL, "
    "tags TEXT NOT NULL, data TEXT NOT NULL)",
    "CREATE TABLE meta("
    "last_id INTEGER NOT NULL, tags TEXT NOT NULL, type INTEGER, key_path TEXT, "
    "format INTEGER NOT NULL)",
)
LATEST_SCHEMA = "CREATE TABLE latest(key PRIMARY KEY, id INTEGER NOT NULL, data TEXT NOT NULL)"
INSERT_CHANGES = "INSERT INTO changes(id, ts, type, tags, data) VALUES (?, ?, ?, ?, ?)"
UPSERT_LATEST = (
    "INSERT INTO latest(key, id, data) VALUES (?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET id = excluded.id, data = excluded.data "
    "WHERE excluded.id > latest.id"
)

_MISSING = object()


class MirrorError(ValueError):
    """The file cannot be used as this mirror: not a mirror, another format, or
    written by someone else meanwhile."""


class FilterMismatch(MirrorError):
    """The file mirrors another filter (tags, type or key_path) than the one asked
    for: continuing it would mix two selections of the log in one file."""


@dataclass(frozen=True)
class MirrorProgress:
    """Where a sync() stands, handed to its `progress` callback."""

    synced: int  # changes written by this run so far
    last_id: int  # the mirror's position (meta.last_id)
    end_id: int | None  # the known end of the log (client.last_index()), None if unknown
    rate_per_s: float  # changes written per second in this run


@dataclass(frozen=True)
class _Filter:
    tags: tuple[str, ...]  # sorted, without repeats: the server ORs them
    type: int | None
    key_path: str | None

    def describe(self) -> str:
        return f"tags={list(self.tags)} type={self.type} key_path={self.key_path}"


def _key_parts(key_path: str | None) -> tuple[str, ...] | None:
    """`data.config.key` -> ("config", "key"): the path below the change's `data`."""
    if key_path is None:
        return None
    parts = key_path.split(".")
    if parts[0] != "data" or not all(parts):
        raise ValueError(
            f"key_path must be a dotted path into the change's data, such as data.name: "
            f"{key_path!r}"
        )
    return tuple(parts[1:])


def _key_of(data: Any, parts: tuple[str, ...]) -> Any:
    """The value at `parts` below `data` if it can be a key (a string, or a number
    SQLite can hold); _MISSING otherwise. A part that is a number indexes a list."""
    value = data
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    if isinstance(value, bool):
        return _MISSING
    if isinstance(value, str | float):
        return value
    if isinstance(value, int) and -INTEGER_MAX - 1 <= value <= INTEGER_MAX:
        return value
    return _MISSING


def _open(path: str) -> sqlite3.Connection:
    try:
        connection = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as error:
        raise MirrorError(f"{path}: cannot open: {error}") from error
    try:
        (mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
        if str(mode).lower() != "wal":  # readers could not read while it writes
            connection.close()
            raise MirrorError(f"{path}: SQLite refused WAL mode (journal_mode={mode})")
        # In WAL mode, NORMAL syncs at checkpoints, not at every commit: a power loss
        # may drop the newest transactions, never tear one, and meta.last_id is in
        # the same transactions as the rows, so the mirror resumes where the file ends.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    except sqlite3.DatabaseError as error:
        connection.close()
        raise MirrorError(f"{path}: not a SQLite database: {error}") from error
    return connection


class Mirror:
    """A local SQLite copy of the change log, or of the changes matching `tags`
    (ORed) and `type`, kept by sync(). See the module docstring and docs/MIRROR.md.

    `key_path` (`data.name`, `data.config.key`): also keep `latest`, the newest
    change per value at that path (changes without one are kept in `changes` only).
    `limit`: changes asked for per page, at most the server's `--max-limit` (default
    10000); every page is one transaction. `block_s`: the long poll's wait when the
    mirror is caught up (a `stop` is noticed within it). `skip_missed`: go on past
    changes purged before they were mirrored instead of raising ChangesMissed (an
    empty mirror always starts at the first change still stored).

    Opening checks the file: a new or empty file becomes a mirror of this filter; a
    mirror made with another filter raises FilterMismatch, any other file MirrorError
    (both ValueErrors). One Mirror is for one thread at a time; any number of other
    connections and processes may read the file meanwhile.
    """

    def __init__(
        self,
        client: Client,
        path: str | os.PathLike[str],
        *,
        tags: Sequence[str] = (),
        type: int | None = None,
        key_path: str | None = None,
        limit: int = 10_000,
        block_s: float = 30.0,
        skip_missed: bool = False,
    ) -> None:
        if isinstance(tags, str):
            raise TypeError("tags must be a sequence of strings, not one string")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if block_s < 0:
            raise ValueError("block_s must not be negative")
        self._client = client
        self._path = os.fspath(path)
        self._filter = _Filter(tuple(sorted(set(tags))), type, key_path)
        self._key_parts = _key_parts(key_path)
        self._limit = limit
        self._block_s = block_s
        self._skip_missed = skip_missed
        self._connection: sqlite3.Connection | None = _open(self._path)
        try:
            self._last_id = self._prepare()
        except BaseException:
            self.close()
            raise

    # The file ---------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise MirrorError(f"{self._path}: the mirror is closed")
        return self._connection

    def _prepare(self) -> int:
        """Create the tables in a new file, or check an existing mirror's filter;
        the position (meta.last_id)."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                tables = {
                    name
                    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                if not tables:
                    self._create(db)
                    last_id = 0
                else:
                    last_id = self._check(db, tables)
                db.execute("COMMIT")
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
        except sqlite3.DatabaseError as error:
            raise MirrorError(f"{self._path}: not a usable SQLite database: {error}") from error
        return last_id

    def _create(self, db: sqlite3.Connection) -> None:
        for statement in SCHEMA:
            db.execute(statement)
        if self._key_parts is not None:
            db.execute(LATEST_SCHEMA)
        wanted = self._filter
        db.execute(
            "INSERT INTO meta(last_id, tags, type, key_path, format) VALUES (0, ?, ?, ?, ?)",
            (orjson.dumps(wanted.tags).decode(), wanted.type, wanted.key_path, FORMAT),
        )

    def _check(self, db: sqlite3.Connection, tables: set[str]) -> int:
        if not {"changes", "meta"} <= tables:
            raise MirrorError(f"{self._path}: not a changeagent mirror (no changes and meta)")
        rows = db.execute("SELECT last_id, tags, type, key_path, format FROM meta").fetchall()
        if len(rows) != 1:
            raise MirrorError(f"{self._path}: not a changeagent mirror ({len(rows)} meta rows)")
        last_id, tags_text, type, key_path, format = rows[0]
        if format != FORMAT:
            raise MirrorError(f"{self._path}: mirror format {format}, this client writes {FORMAT}")
        stored = _Filter(tuple(orjson.loads(tags_text)), type, key_path)
        if stored != self._filter:
            raise FilterMismatch(
                f"{self._path} mirrors {stored.describe()}, not {self._filter.describe()}: "
                "use another file for another filter"
            )
        if key_path is not None and "latest" not in tables:
            raise MirrorError(f"{self._path}: not a changeagent mirror (no latest table)")
        return int(last_id)

    def _stored_last_id(self) -> int:
        (last_id,) = self._db().execute("SELECT last_id FROM meta").fetchone()
        return int(last_id)

    def _write(self, batch: list[Change]) -> None:
        """One page, its `latest` rows and the new position, in one transaction."""
        dumps = orjson.dumps
        rows = [
            (
                change.id,
                change.ts,
                change.type,
                dumps(change.tags).decode(),
                dumps(change.data).decode(),
            )
            for change in batch
        ]
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._stored_last_id() != self._last_id:
                raise MirrorError(
                    f"{self._path}: meta.last_id moved from {self._last_id} under this mirror: "
                    "another process is writing the file"
                )
            db.executemany(INSERT_CHANGES, rows)
            if self._key_parts is not None:
                db.executemany(UPSERT_LATEST, self._latest_rows(batch, rows))
            db.execute("UPDATE meta SET last_id = ?", (batch[-1].id,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            else:  # committed, and interrupted right after (a signal handler raised)
                self._last_id = self._stored_last_id()
            raise
        self._last_id = batch[-1].id

    def _latest_rows(
        self, batch: list[Change], rows: list[tuple[int, int, int, str, str]]
    ) -> list[tuple[Any, int, str]]:
        """The newest change of this page per key (the page is in id order)."""
        assert self._key_parts is not None
        parts = self._key_parts
        newest: dict[Any, tuple[int, str]] = {}
        for change, row in zip(batch, rows, strict=True):
            key = _key_of(change.data, parts)
            if key is not _MISSING:
                newest[key] = (change.id, row[4])
        return [(key, id, data) for key, (id, data) in newest.items()]

    # Reading the log --------------------------------------------------------------

    def _pages(
        self, since: int, once: bool, stop: threading.Event | None
    ) -> Generator[list[Change], None, None]:
        wanted = self._filter
        yield from self._client.follow_pages(
            since,
            tags=wanted.tags,
            type=wanted.type,
            block_s=self._block_s,
            limit=self._limit,
            skip_missed=self._skip_missed,
            stop_at_end=once,
            stop=stop,
        )

    def _end_id(self) -> int | None:
        try:
            return self._client.last_index()
        except Exception:  # only for the progress display: unknown then
            return None

    # The API ----------------------------------------------------------------------

    @property
    def last_id(self) -> int:
        """The mirror's position: the id of the newest change in the file (meta.last_id),
        0 when it is empty."""
        return self._last_id

    @property
    def path(self) -> str:
        return self._path

    def sync(
        self,
        *,
        once: bool = False,
        stop: threading.Event | None = None,
        progress: Callable[[MirrorProgress], None] | None = None,
        section: threading.Lock | None = None,
    ) -> int:
        """Copy the changes after last_id into the file, a page per transaction, and
        return how many were written. `once`: return when caught up with the log's
        end. Otherwise follow it (long polls of block_s) until `stop` is set, which
        ends the sync within about block_s (at once between pages).

        An empty mirror starts at the first change the server still stores; a
        non-empty one raises ChangesMissed when purge removed changes after its
        position, unless skip_missed. Errors from the client after its retries
        (ConnectionFailed, Unavailable) propagate; the file then holds what was
        written, and another sync() goes on from there. `progress` is called once at
        the start and after every page written. `section`, if given, is held while the
        file is read or written: a thread that takes it (and keeps it) may close the
        file while this sync waits for the server (`changeagent mirror` on SIGINT)."""
        guard = section if section is not None else contextlib.nullcontext()
        with guard:
            self._last_id = self._stored_last_id()
        started = time.monotonic()
        synced = 0
        end_id = self._end_id() if progress is not None else None
        refreshed = started
        if progress is not None:
            progress(MirrorProgress(0, self._last_id, end_id, 0.0))
        since = self._last_id
        while stop is None or not stop.is_set():
            pages = self._pages(since, once, stop)
            try:
                for batch in pages:
                    with guard:
                        self._write(batch)
                    synced += len(batch)
                    if progress is not None:
                        now = time.monotonic()
                        if (end_id is None or self._last_id >= end_id) and (
                            now - refreshed >= END_REFRESH_S
                        ):
                            end_id, refreshed = self._end_id(), now
                        if end_id is not None and self._last_id > end_id:
                            end_id = self._last_id
                        rate = synced / max(now - started, 1e-9)
                        progress(MirrorProgress(synced, self._last_id, end_id, rate))
                    if stop is not None and stop.is_set():
                        break
                return synced
            except ChangesMissed as gap:
                # An empty mirror has missed nothing: it starts at the first change
                # still stored. A non-empty one would have a hole: raise.
                if self._last_id != 0 or gap.first_retained is None:
                    raise
                since = max(since, gap.first_retained - 1)
            finally:
                pages.close()
        return synced

    def close(self) -> None:
        """Close the file (not the client). Safe to call twice."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> Mirror:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
