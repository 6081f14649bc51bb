"""What the server returns, as frozen dataclasses parsed from its JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Change:
    """One stored change. `ts` is nanoseconds since the epoch. A retried post whose
    change was purged meanwhile is answered with its id only: then `ts` is 0 and
    `data` None."""

    id: int
    ts: int
    type: int = 0
    tags: tuple[str, ...] = ()
    data: Any = None

    @classmethod
    def from_json(cls, document: Any) -> Change:
        """Parse `{"_id","_ts","type","tags","data"}`; ValueError when malformed."""
        if not isinstance(document, dict) or not isinstance(document.get("_id"), int):
            raise ValueError(f"not a change: {str(document)[:200]}")
        tags = document.get("tags") or ()
        return cls(
            id=document["_id"],
            ts=int(document.get("_ts", 0)),
            type=int(document.get("type", 0)),
            tags=tuple(str(tag) for tag in tags),
            data=document.get("data"),
        )


@dataclass(frozen=True)
class Page:
    """One answer of GET /changes. `missed` is true when purge removed changes after
    `since` that were never read; `first_retained` is then the first index still
    stored."""

    changes: tuple[Change, ...]
    at_start: bool
    at_end: bool
    missed: bool = False
    first_retained: int | None = None

    @classmethod
    def from_json(cls, document: Any) -> Page:
        """Parse `{"changes","atStart","atEnd","missedChanges"?,"firstRetained"?}`."""
        if not isinstance(document, dict) or not isinstance(document.get("changes"), list):
            raise ValueError(f"not a page of changes: {str(document)[:200]}")
        first_retained = document.get("firstRetained")
        return cls(
            changes=tuple(Change.from_json(item) for item in document["changes"]),
            at_start=bool(document.get("atStart", False)),
            at_end=bool(document.get("atEnd", False)),
            missed=bool(document.get("missedChanges", False)),
            first_retained=first_retained if isinstance(first_retained, int) else None,
        )


@dataclass(frozen=True)
class Health:
    """One server's GET /health: `ok` on 200; `detail` is its text ("ok", "marked
    down", "failed: ...", "shutting down")."""

    url: str
    ok: bool
    detail: str
