"""What the core needs from the outside, and the snapshot record it exchanges.

The core never does I/O itself, but it must read its durable log (to replicate
and to check terms) without holding every entry in memory. Like etcd-io/raft it
reads through an injected `LogReader`: the simulator gives it an in-memory one,
the node gives it one backed by SQLite with a hot tail cached in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from changeagent.raft.entry import Entry


class Compacted(Exception):
    """The requested index lies below the first retained entry (it was purged)."""


class Unavailable(Exception):
    """The requested index lies above the last durable entry."""


@dataclass(frozen=True, slots=True)
class Membership:
    """Voters and learners by node id. Invariant: the two sets are disjoint."""

    voters: frozenset[int] = field(default_factory=frozenset)
    learners: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state at a compaction point.

    The changes themselves are the log, so a snapshot is small: the last
    included index and term, the membership in force there, and the node's
    opaque state-machine metadata (`data`: settings, member addresses, ...).
    A snapshot with index 0 means "nothing compacted yet".
    """

    index: int = 0
    term: int = 0
    membership: Membership = field(default_factory=Membership)
    data: bytes = b""


class LogReader(Protocol):
    """Read access to the durable log; implemented by storage and by the simulator.

    Indices: `snapshot().index + 1 == first_index() <= last_index() + 1`.
    """

    def first_index(self) -> int:
        """Index of the first retained entry (`snapshot().index + 1`)."""
        ...

    def last_index(self) -> int:
        """Index of the last durable entry (`snapshot().index` when the log is empty)."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at `index`; the snapshot's term at `snapshot().index`.

        Raises `Compacted` below the snapshot index, `Unavailable` above `last_index()`.
        Index 0 has term 0.
        """
        ...

    def entries(self, low: int, high: int, max_bytes: int) -> list[Entry]:
        """Entries in [low, high), stopping once `max_bytes` of data is exceeded,
        but always returning at least one entry when the range is not empty.

        Raises `Compacted` if `low < first_index()`, `Unavailable` if `high > last_index() + 1`.
        """
        ...

    def internal_entries(self, low: int, high: int) -> list[Entry]:
        """The entries of negative (internal) type in [low, high), in order.

        Lets the core find membership entries at start-up without reading every
        change (storage answers from an index on the type).
        """
        ...

    def snapshot(self) -> Snapshot:
        """The latest compaction point."""
        ...
