"""A write batch: everything one Raft `Ready` asks to make durable, as one unit."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from changeagent.raft.entry import Entry, HardState
from changeagent.raft.interfaces import Membership, Snapshot
from changeagent.storage.schema import RESERVED_META_PREFIX

if TYPE_CHECKING:
    from changeagent.storage.seed import SeedInfo


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """What to persist atomically. Applied in this order within its transaction:

    0. `discard_log`: delete every entry (with tags and idempotency keys) and
       reset the snapshot record to `Snapshot()` (index 0, no membership): a
       node that holds no user change does this before joining a cluster, so
       that nothing of its own one-member history (terms, no-ops) remains.
    1. `snapshot` without `compact_to`: install a snapshot received from a
       leader. If the log holds `snapshot.index` with `snapshot.term`, the
       entries up to it are discarded and the rest kept; otherwise the whole
       log is discarded (Raft §7). `first_index()` becomes `snapshot.index + 1`.
    2. `entries`: appended. If the first one's index is <= `last_index()`, the
       conflicting suffix (from that index on, with its tags and idempotency
       keys) is deleted first. Entries must be contiguous and must not reach
       below `first_index()`.
    3. `hard_state` and `meta` (arbitrary node metadata; keys must not start
       with "storage.") are upserted.
    4. `compact_to=N`: local compaction. Entries <= N are deleted with their
       tags and idempotency keys, and the snapshot record becomes `snapshot`
       when given (its index must be N and its term the log's term at N), or
       else (N, term(N), `compact_membership` or the previous snapshot's
       membership, `compact_data` or the previous snapshot's data).
    """

    hard_state: HardState | None = None
    entries: Sequence[Entry] = ()
    snapshot: Snapshot | None = None
    meta: Mapping[str, bytes] = field(default_factory=dict)
    compact_to: int | None = None
    compact_membership: Membership | None = None
    compact_data: bytes | None = None
    discard_log: bool = False
    # A checked seed file (`seed.py`) that becomes the whole database, with this
    # node's metadata (and `meta`) and `hard_state`. Alone: no entries, snapshot,
    # compaction or discard; the writer moves the file into place (no transaction).
    seed: SeedInfo | None = None

    def validate(self) -> None:
        """Checks that need no log state; raises ValueError."""
        entries = self.entries
        alone = not (entries or self.discard_log)
        alone = alone and self.snapshot is None and self.compact_to is None
        if self.seed is not None and not (alone and self.hard_state is not None):
            raise ValueError("a seed replaces the database: a hard state with it, nothing else")
        for previous, entry in itertools.pairwise(entries):
            if entry.index != previous.index + 1:
                raise ValueError(
                    f"entries must be contiguous: {entry.index} follows {previous.index}"
                )
        if entries and entries[0].index < 1:
            raise ValueError(f"entry index must be >= 1, got {entries[0].index}")
        for key in self.meta:
            if key.startswith(RESERVED_META_PREFIX):
                raise ValueError(f"meta key {key!r} is reserved for storage")
        if self.compact_to is not None:
            if self.compact_to < 0:
                raise ValueError(f"compact_to must be >= 0, got {self.compact_to}")
            if self.snapshot is not None and self.snapshot.index != self.compact_to:
                raise ValueError(
                    f"snapshot index {self.snapshot.index} != compact_to {self.compact_to}"
                )

    def size_bytes(self) -> int:
        """Approximate payload size, to bound one group commit."""
        return sum(len(entry.data) + len(entry.key) for entry in self.entries) + sum(
            len(value) for value in self.meta.values()
        )
