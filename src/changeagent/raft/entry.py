"""Log entries and the hard state: the records shared by the core, storage and transport.

These two types cross every layer, so they are kept tiny and stable. The core
treats `data` as opaque bytes except for its own internal entry types.
"""

from __future__ import annotations

from dataclasses import dataclass

# Entry types. Users own types >= 0; negative types are internal to changeagent.
ENTRY_TYPE_NOOP = -1  # appended by every new leader at the start of its term
ENTRY_TYPE_MEMBERSHIP = -2  # a single-server membership change (data: the core's encoding)
ENTRY_TYPE_CONFIG = -3  # replicated /config settings (data: the node's encoding)
ENTRY_TYPE_PURGE = -4  # discard the log prefix up to an index (data: the node's encoding)


@dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry.

    For user changes (type >= 0), `data` is the change's final JSON wire bytes
    (`{"_id":..,"_ts":..,...}`), built once by the leader, and `key` is the
    client's idempotency key ("" when none), replicated so that every node can
    answer a retry.
    """

    index: int
    term: int
    type: int
    data: bytes
    key: str = ""


@dataclass(frozen=True, slots=True)
class HardState:
    """What Raft must persist before answering messages: term, vote and commit index."""

    term: int = 0
    vote: int = 0  # node id voted for in `term`; 0 means none
    commit: int = 0
