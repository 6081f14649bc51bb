"""The purge point, found incrementally.

The node asks for the purge point every second or so. Computed from scratch it
costs a scan of `min_records` rows plus every change older than the cutoff,
which on a log that keeps a million records is a million rows a second. Both
parts only move forward as the log grows and the cutoff advances, so the
scanner remembers where they were and scans only what was added since:

- the `min_records`-th newest user change at or below `upto` moves forward by
  exactly as many user changes as were added in (previous upto, upto];
- every user change below the previous "first recent" one was older than the
  previous cutoff, hence older than a later cutoff too.

A truncation (which can rewrite entries below the remembered positions), a
smaller `upto`, an earlier cutoff or a different `min_records` start over.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass

from changeagent.storage import reads

_COUNT_USERS_BETWEEN = "SELECT count(*) FROM entries WHERE idx > ? AND idx <= ? AND +type >= 0"
_COUNT_USERS_UPTO = "SELECT count(*) FROM entries WHERE idx <= ? AND +type >= 0"
_NTH_USER_AFTER = (
    "SELECT idx FROM entries WHERE idx > ? AND +type >= 0 ORDER BY idx LIMIT 1 OFFSET ?"
)
_FIRST_RECENT_FROM = (
    "SELECT idx FROM entries WHERE idx >= ? AND idx <= ? AND +type >= 0 AND ts >= ? "
    "ORDER BY idx LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class _Position:
    truncations: int  # the storage's truncation count when this was computed
    snapshot_index: int
    upto: int
    min_records: int
    newest_kth: int | None  # the min_records-th newest user change <= upto
    users_upto: int | None  # when there are fewer than min_records: how many
    cutoff_ns: int
    first_recent: int | None  # the first user change <= upto with ts >= cutoff


class PurgeScanner:
    """Computes `purge_point` reusing the previous call's positions. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: _Position | None = None

    def purge_point(
        self,
        connection: sqlite3.Connection,
        min_records: int,
        older_than_ts_ns: int,
        upto: int,
        truncations: int,
        snapshot_index: int,
        unchanged: Callable[[], bool] = lambda: True,
    ) -> int:
        """Same answer as `reads.purge_point` on the same log.

        The positions are remembered only if `unchanged()` (no removal raced
        with these queries) still holds afterwards.
        """
        with self._lock:
            last = self._last
            if last is not None and (last.truncations != truncations or upto < last.upto):
                last = None
            newest_kth, users_upto = self._newest_kth(
                connection, min_records, upto, snapshot_index, last
            )
            first_recent = self._first_recent(connection, older_than_ts_ns, upto, last)
            if unchanged():
                self._last = _Position(
                    truncations,
                    snapshot_index,
                    upto,
                    min_records,
                    newest_kth,
                    users_upto,
                    older_than_ts_ns,
                    first_recent,
                )
            else:
                self._last = None
        point = upto
        if min_records > 0:
            if newest_kth is None:
                return 0
            point = min(point, newest_kth - 1)
        if first_recent is not None:
            point = min(point, first_recent - 1)
        return max(point, 0)

    def _newest_kth(
        self,
        connection: sqlite3.Connection,
        min_records: int,
        upto: int,
        snapshot_index: int,
        last: _Position | None,
    ) -> tuple[int | None, int | None]:
        if min_records <= 0:
            return None, None
        if last is not None and last.min_records == min_records:
            added = _scalar(connection, _COUNT_USERS_BETWEEN, (last.upto, upto)) or 0
            if last.newest_kth is not None and snapshot_index < last.newest_kth:
                if added == 0:
                    return last.newest_kth, None
                return _scalar(connection, _NTH_USER_AFTER, (last.newest_kth, added - 1)), None
            if last.users_upto is not None and snapshot_index == last.snapshot_index:
                return _from_count(connection, min_records, last.users_upto + added)
        row = connection.execute(reads.NTH_NEWEST_USER, (upto, min_records - 1)).fetchone()
        if row is not None:
            return int(row[0]), None
        return None, _scalar(connection, _COUNT_USERS_UPTO, (upto,)) or 0

    def _first_recent(
        self,
        connection: sqlite3.Connection,
        cutoff_ns: int,
        upto: int,
        last: _Position | None,
    ) -> int | None:
        start = 0
        if last is not None and cutoff_ns >= last.cutoff_ns:
            start = last.first_recent if last.first_recent is not None else last.upto + 1
        return _scalar(connection, _FIRST_RECENT_FROM, (start, upto, cutoff_ns))


def _from_count(
    connection: sqlite3.Connection, min_records: int, users: int
) -> tuple[int | None, int | None]:
    """The kth newest when `users` user changes are retained: few, so a short scan."""
    if users < min_records:
        return None, users
    return _scalar(connection, _NTH_USER_AFTER, (0, users - min_records)), None


def _scalar(connection: sqlite3.Connection, query: str, parameters: tuple[int, ...]) -> int | None:
    row = connection.execute(query, parameters).fetchone()
    return None if row is None or row[0] is None else int(row[0])
