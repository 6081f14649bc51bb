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


@dataclass(frozen=True)
class Backup:
    """A backup saved by backup(): where, its size, the SHA-256 its trailer holds
    (over everything before the trailer), and what its header says: the node it came from (base-36
    ids), the last log index it holds (every entry up to it committed), and its
    changes (how many, first and last `_id`; 0 when none)."""

    path: str
    bytes: int
    sha256: str
    node_id: str
    cluster_id: str
    commit_index: int
    changes: int
    first_change_id: int
    last_change_id: int
    created_ns: int

    def document(self) -> dict[str, Any]:
        """As `changeagent backup` prints it."""
        return {
            "file": self.path,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "nodeId": self.node_id,
            "clusterId": self.cluster_id,
            "commitIndex": self.commit_index,
            "changes": self.changes,
            "firstChangeId": self.first_change_id,
            "lastChangeId": self.last_change_id,
            "createdNs": self.created_ns,
        }
