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


@dataclass(slots=True)
class PageResult:
    """One page of changes, as stored bytes, plus what the response reports about it."""

    bodies: list[bytes]
    at_start: bool
    at_end: bool
    first_retained: int  # first index still in the log (purge point + 1)
    missed: bool  # `since` lies below the purge point: the consumer missed changes
    _encoded: bytes | None = None

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
