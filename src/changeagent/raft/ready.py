"""The records the core hands to the node layer: Ready and its parts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from changeagent.raft.entry import Entry, HardState
from changeagent.raft.interfaces import Snapshot
from changeagent.raft.messages import Message


class Role(IntEnum):
    """A core's role. A not-yet-added node, or a removed one that knows its
    removal is committed, is a FOLLOWER that never campaigns; the node layer
    reports it as joining or standalone. (A removed node that does not know the
    removal committed may still campaign: it may be needed to commit it.)"""

    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class ProgressState(Enum):
    """How the leader replicates to one follower (etcd's progress states)."""

    PROBE = "probe"  # one APPEND at a time until the follower's log position is known
    REPLICATE = "replicate"  # optimistic pipelining, up to max_inflight_messages
    SNAPSHOT = "snapshot"  # a SNAPSHOT was sent; waiting for the follower to install it


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting: who leads, and this node's role."""

    role: Role
    leader_id: int | None


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed ReadIndex request: once the node has applied `index`, a read
    tagged `context` sees every write acknowledged before the request."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class PeerProgress:
    """Diagnostic view of the leader's replication state for one peer.

    Invariant: 0 <= match < next.
    """

    match: int
    next: int
    state: ProgressState
    recent_active: bool
    inflight_messages: int
    learner: bool
    reachable: bool = False  # heard from within the last one or two election timeouts


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the node must do, in order, before calling `advance(ready)`.

    Ordering contract (the simulator checks it):

    1. `messages` may be sent at once, even before anything is persisted. They are
       the leader's APPEND / HEARTBEAT / SNAPSHOT / TIMEOUT_NOW messages and
       pre-vote traffic: the leader may write its own new entries to disk in
       parallel with replicating them (Raft dissertation §10.2.1).
    2. Persist, in one transaction (or at least entries before hard state):
       - `snapshot` if not None: replace the log with it (every entry at or below
         `snapshot.index` is discarded, and so is the log if it does not match).
       - `entries`: append them. If the first one's index is <= the durable last
         index, first truncate the durable suffix from that index on (a conflict).
       - `hard_state` if not None (term, vote, commit).
       After this, the `LogReader` given to the core must reflect the new state.
    3. Only then send `messages_after_persist`: votes and append responses, which
       promise the receiver that this node's term, vote and entries are durable.
    4. Apply `committed_entries` in order (no gaps; each is handed out exactly
       once), and serve the `read_states` once their index is applied.
    5. Call `advance(ready)`. It means "everything in this Ready is durable and
       applied". The leader counts its own entries toward the commit quorum only
       now, so nothing commits before it is durable on the leader too; likewise a
       candidate counts its own vote only now, once HardState(term, vote) is
       durable (a lone voter therefore becomes leader in `advance`, not in
       `campaign`).

    Only one Ready may be outstanding: call `advance` before the next `ready()`.
    `step`, `tick` and `propose` may be called in between; their effects go into
    the next Ready.
    """

    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Message, ...] = ()
    messages_after_persist: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    soft_state: SoftState | None = None
