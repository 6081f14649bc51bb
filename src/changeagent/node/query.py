"""A read of the change list and its answer, shared by the API and the node."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class ChangeQuery:
    """GET /changes parameters after validation. Hashable: long-polls group by it."""

    since: int = 0
    limit: int = 100
    tags: tuple[str, ...] = ()  # ORed; empty means every change
    type: int | None = None

    def with_since(self, since: int, limit: int | None = None) -> ChangeQuery:
        return replace(self, since=since, limit=self.limit if limit is None else limit)


def change_id(body: bytes) -> bytes:
    """The `_id` (its digits) of one stored change: its bytes begin `{"_id":N,`."""
    return body[7 : body.index(b",", 7)]


@dataclass(slots=True)
class PageResult:
    """One page of changes, as stored bytes, plus what the response reports about it."""

    bodies: list[bytes]
    at_start: bool
    at_end: bool
    first_retained: int  # first index still in the log (purge point + 1)
    missed: bool  # `since` lies below the purge point: the consumer missed changes
    _encoded: bytes | None = None

    def last_id(self) -> int:
        """The `_id` of the page's last change (0 when empty): stored changes begin
        `{"_id":N,`."""
        return int(change_id(self.bodies[-1])) if self.bodies else 0

    def encode(self) -> bytes:
        """The response body, built once and shared by every waiter given this page."""
        if self._encoded is None:
            parts = [b'{"changes":[', b",".join(self.bodies), b'],"atStart":']
            parts.append(b"true" if self.at_start else b"false")
            parts.append(b',"atEnd":')
            parts.append(b"true" if self.at_end else b"false")
            if self.missed:
                parts.append(b',"missedChanges":true,"firstRetained":')
                parts.append(str(self.first_retained).encode())
            parts.append(b"}")
            self._encoded = b"".join(parts)
        return self._encoded


@dataclass(frozen=True, slots=True)
class KnownPrefix:
    """What earlier reads of a query found, so that a long-poll's next read of it looks
    only at what is new.

    No change in (since, scanned_upto] matches the query: the next read starts at
    `resume_after`. `at_start` is atStart as of the page whose first retained index
    was `first_retained` (None if unknown). Once a read has covered `since`, appends
    cannot change atStart and a purge can only turn it from false to true, so it
    holds while `first_retained` does, and for good when true. It is also atStart
    for `resume_after`: nothing in between matches.
    """

    scanned_upto: int
    at_start: bool | None = None
    first_retained: int = 0

    @classmethod
    def after_read(cls, query: ChangeQuery, page: PageResult, upto: int) -> KnownPrefix:
        """What `page`, an answer to `query` read up to `upto` with no change in it,
        establishes."""
        at_start = page.at_start if query.since <= upto else None
        return cls(upto, at_start, page.first_retained)

    def resume_after(self, query: ChangeQuery) -> int:
        return max(query.since, self.scanned_upto)
