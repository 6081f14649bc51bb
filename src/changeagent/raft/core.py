"""RaftNode: the pure Raft state machine (see the package docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeagent.raft.confchange import ConfChange
from changeagent.raft.config import RaftConfig
from changeagent.raft.entry import HardState
from changeagent.raft.interfaces import LogReader, Membership, Snapshot
from changeagent.raft.messages import Message
from changeagent.raft.ready import PeerProgress, Ready, Role

if TYPE_CHECKING:
    import random


class RaftNode:
    """One Raft participant, driven by `tick`, `step`, `propose` and the Ready loop.

    `log` is the durable log (read-only to the core); `hard_state` is the last
    persisted term, vote and commit; `rng` supplies the randomized election
    timeouts. Membership is recovered from `log.snapshot().membership` plus the
    membership entries found in the log after it. `applied` is the index the
    node's state machine has applied (default: the snapshot index, so every
    committed entry after it is handed out again).
    """

    def __init__(
        self,
        config: RaftConfig,
        log: LogReader,
        hard_state: HardState,
        rng: random.Random,
        *,
        applied: int | None = None,
    ) -> None:
        raise NotImplementedError

    # --- inputs -------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, check-quorum)."""
        raise NotImplementedError

    def step(self, message: Message) -> None:
        """Process one message from a peer. Messages not addressed to this node,
        stale ones and malformed ones are ignored (a peer may be buggy or late)."""
        raise NotImplementedError

    def propose(self, entries_data: list[tuple[int, bytes, str]]) -> range:
        """Append (type, data, idempotency key) entries as the leader; return their indices.

        Raises `NotLeader(leader_hint)` on a non-leader, `ProposalDropped` when a
        limit is reached or a leadership transfer is in progress, and `ValueError`
        for the internal types the core owns (no-op, membership).
        """
        raise NotImplementedError

    def propose_membership(self, change: ConfChange) -> int:
        """Append one single-server membership change; return its index.

        It takes effect as soon as it is appended. Raises `NotLeader`, or
        `MembershipChangeRejected` if another change is still uncommitted, the
        leader has not committed an entry of its term yet, or the change does
        not apply to the current membership.
        """
        raise NotImplementedError

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read. When confirmed, a `ReadState(index, context)`
        appears in a later Ready: the read may be served once `index` is applied.

        On a follower, the request is forwarded to the leader. Raises `NotLeader(None)`
        when no leader is known and `ProposalDropped` when too many reads are pending.
        """
        raise NotImplementedError

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to voter `target` (TimeoutNow once it is caught up).

        Proposals are dropped while the transfer is pending; it is abandoned
        after an election timeout. Raises `NotLeader` on a non-leader and
        `ValueError` if `target` is not a voter.
        """
        raise NotImplementedError

    def campaign(self) -> None:
        """Start an election now (skipping pre-vote), e.g. for a fresh one-member cluster."""
        raise NotImplementedError

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Make `index` (<= applied) the new compaction point; return its `Snapshot`.

        The returned record (index, term, membership in force at `index`, `data`)
        is what the node persists together with the purge of the log prefix, in
        one transaction. The core tolerates the LogReader showing the old prefix
        until then; afterwards `log.snapshot()` must return this record, which is
        what the leader sends to followers that need purged entries.
        """
        raise NotImplementedError

    # --- outputs ------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether `ready()` would return something to do."""
        raise NotImplementedError

    def ready(self) -> Ready:
        """Collect what to persist, send and apply (see `Ready` for the ordering)."""
        raise NotImplementedError

    def advance(self, ready: Ready) -> None:
        """Acknowledge that everything in `ready` is durable and applied."""
        raise NotImplementedError

    # --- state --------------------------------------------------------------

    @property
    def role(self) -> Role:
        raise NotImplementedError

    @property
    def leader_id(self) -> int | None:
        raise NotImplementedError

    @property
    def term(self) -> int:
        raise NotImplementedError

    @property
    def commit_index(self) -> int:
        raise NotImplementedError

    @property
    def membership(self) -> Membership:
        raise NotImplementedError

    @property
    def progress(self) -> dict[int, PeerProgress]:
        """Per-peer replication state on the leader (empty elsewhere)."""
        raise NotImplementedError
