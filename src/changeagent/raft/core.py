"""RaftNode: the pure Raft state machine (see the package docstring).

`RaftNode` holds the state (Figure 2 of the Raft paper, the leader's per-peer
progress, the outputs for the next Ready) and coordinates. `step` applies the
term rules common to every role (§5.1, PreVote, leader stickiness), then
dispatches to one small handler per (role, message type) from the table in
`handlers`; `tick` dispatches per role too. The rules live in sibling modules
as plain functions of the node, which read and write its state directly (like
`InvariantChecker`, they are part of the core):

- `elections`: term rules, the election timer, campaigns and votes;
- `replication`: the leader's proposals, APPENDs, SNAPSHOTs, heartbeats, commits;
- `leader`: the leader's tick and the responses it handles;
- `follower`: a follower's APPEND, HEARTBEAT and SNAPSHOT handlers;
- `readindex`, `transfer`, `reconfiguration`: ReadIndex, leadership transfer,
  membership changes.

Everything the node must do is collected in an `Outbox` and handed out as a
`Ready`; nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from changeagent.raft import elections, leader, readindex, reconfiguration, replication, transfer
from changeagent.raft.confchange import ConfChange
from changeagent.raft.config import RaftConfig
from changeagent.raft.entry import HardState
from changeagent.raft.errors import InvariantViolation
from changeagent.raft.handlers import HANDLERS
from changeagent.raft.interfaces import LogReader, Membership, Snapshot
from changeagent.raft.invariants import InvariantChecker
from changeagent.raft.log import RaftLog
from changeagent.raft.membership import MembershipLog
from changeagent.raft.messages import Message
from changeagent.raft.outbox import Outbox
from changeagent.raft.progress import Progress
from changeagent.raft.readindex import ReadIndexQueue
from changeagent.raft.ready import PeerProgress, Ready, Role, SoftState

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
        config.validate()
        self._config = config
        self._id = config.node_id
        self._rng = rng
        snapshot = log.snapshot()
        commit = max(hard_state.commit, snapshot.index)
        if commit > log.last_index():
            raise InvariantViolation(
                f"persisted commit {commit} is beyond the last entry {log.last_index()}"
            )
        applied = snapshot.index if applied is None else max(applied, snapshot.index)
        if applied > commit:
            raise ValueError(f"applied {applied} is beyond the commit index {commit}")
        self._log = RaftLog(log, commit, applied)
        self._term = hard_state.term
        self._vote = hard_state.vote
        self._role = Role.FOLLOWER
        self._leader: int | None = None
        # Membership: the one at the compaction point, then one per membership entry.
        self._memberships = MembershipLog(snapshot.membership, snapshot.index)
        self._memberships.recover(log)
        # Elections and timers (in ticks).
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._tick_count = 0  # ticks since start; never reset
        self._randomized_timeout = config.election_ticks
        self._votes: dict[int, bool] = {}
        # Leader state (Figure 2: reinitialized after election, in `_reset` and
        # `replication.start_term`).
        self._progress: dict[int, Progress] = {}
        self._term_start_index = 0  # index of this leader's no-op entry
        self._committed_in_term = False
        self._pending_conf_index = 0
        self._transferee: int | None = None
        self._uncommitted_bytes = 0
        self._reads = ReadIndexQueue(config.max_pending_reads)
        # Removed members the leader still replicates to, so that they learn of
        # their removal and stop campaigning: peer -> index of the removal.
        self._departing: dict[int, int] = {}
        # Outputs collected for the next Ready.
        self._outbox = Outbox(self._log, self._hard_state, self._soft_state, self._state_changed)
        self._reset_election_timer()
        self._checker = InvariantChecker(self)

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, check-quorum)."""
        self._tick_count += 1
        if self._role is Role.LEADER:
            leader.tick_leader(self)
        else:
            elections.tick_election(self)
        self._checker.check()

    def step(self, message: Message) -> None:
        """Process one message from a peer. Messages not addressed to this node
        and stale ones are ignored (a peer may be late or confused)."""
        if message.target != self._id or message.source <= 0 or message.source == self._id:
            return
        if message.term > self._term:
            if not elections.on_higher_term(self, message):
                return
        elif message.term < self._term:
            elections.on_lower_term(self, message)
            return
        self._dispatch(message)
        self._checker.check()

    def propose(self, entries_data: list[tuple[int, bytes, str]]) -> range:
        """Append (type, data, idempotency key) entries as the leader; return their indices.

        Raises `NotLeader(leader_hint)` on a non-leader, `ProposalDropped` when a
        limit is reached, the leader is being removed or a leadership transfer is
        in progress, and `ValueError` for the internal types the core owns
        (no-op, membership).
        """
        indices = replication.propose(self, entries_data)
        self._checker.check()
        return indices

    def propose_membership(self, change: ConfChange) -> int:
        """Append one single-server membership change; return its index.

        It takes effect as soon as it is appended (§4.1). Raises `NotLeader`, or
        `MembershipChangeRejected` if another change is still uncommitted, the
        leader has not committed an entry of its term yet, the change does not
        apply to the current membership, a learner to promote is not caught
        up (its progress is not in the replicate state), or a demotion would
        leave voters of which too few were heard from recently to form a quorum.
        The last three are `busy` (they may succeed later). A leader that
        removes or demotes itself steps down once the change commits.
        """
        index = reconfiguration.propose_membership(self, change)
        self._checker.check()
        return index

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read (§6.4). When confirmed, a `ReadState(index,
        context)` appears in a later Ready: the read may be served once `index` is
        applied. Unconfirmed requests are forgotten if leadership changes, so the
        node should time them out.

        On a follower, the request is forwarded to the leader. Raises `NotLeader(None)`
        when no leader is known and `ProposalDropped` when too many reads are pending.
        """
        readindex.request_read(self, context)
        self._checker.check()

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to voter `target` (§3.10: TimeoutNow once it is caught up).

        Proposals are dropped while the transfer is pending; it is abandoned
        after an election timeout. Raises `NotLeader` on a non-leader and
        `ValueError` if `target` is not a voter.
        """
        transfer.transfer_leadership(self, target)
        self._checker.check()

    def set_timeouts(self, election_ticks: int, heartbeat_ticks: int) -> None:
        """Adopt new election and heartbeat timeouts (replicated /config changed).

        Raises `ConfigError` if they are invalid; the timers restart from zero, so
        a change never fires an election or a heartbeat at once.
        """
        config = dataclasses.replace(
            self._config, election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks
        )
        config.validate()
        self._config = config
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_election_timer()
        self._checker.check()

    def campaign(self) -> None:
        """Start an election now, skipping pre-vote (e.g. a fresh one-member cluster).

        Does nothing on a leader or on a node that is not a voter.
        """
        if self._role is not Role.LEADER:
            elections.campaign(self, pre_vote=False, transfer=False)
        self._checker.check()

    def compact(self, index: int, data: bytes) -> Snapshot | None:
        """Make `index` (<= applied) the new compaction point; return its `Snapshot`.

        The returned record (index, term, membership in force at `index`, `data`)
        is what the node persists together with the purge of the log prefix, in
        one transaction. The core tolerates the LogReader showing the old prefix
        until then; afterwards `log.snapshot()` must return this record, which is
        what the leader sends to followers that need purged entries.

        Returns None when a snapshot at or beyond `index` is already installed or
        pending (received from the leader, installed with the next Ready): it
        supersedes this compaction. A follower that applies a purge while the
        leader's snapshot arrives must not fail on it.
        """
        if index > self._log.applied:
            raise ValueError(f"cannot compact to {index}: only {self._log.applied} is applied")
        pending = self._log.pending_snapshot
        newest = max(self._log.reader.snapshot().index, pending.index if pending else 0)
        if index <= newest:
            return None
        snapshot = Snapshot(index, self._log.term(index), self.membership_at(index), data)
        self._memberships.compact(index)
        return snapshot

    # ----------------------------------------------------------------- outputs

    def has_ready(self) -> bool:
        """Whether `ready()` would return something to do (False while one is outstanding)."""
        return self._outbox.has_ready()

    def ready(self) -> Ready:
        """Collect what to persist, send and apply (see `Ready` for the ordering)."""
        return self._outbox.take_ready(self._config.max_apply_bytes)

    def take_messages(self) -> tuple[Message, ...]:
        """The messages a Ready would carry in `messages` (those that may leave
        before anything is persisted: heartbeats, appends, pre-votes, heartbeat
        responses), now, out of the next Ready. For a node whose Ready loop waits
        for a slow write (its outstanding Ready's, or a compaction between two
        Readies): a leader writing a large entry on a slow disk would otherwise
        send no heartbeat until it is durable, and its followers would start an
        election. Sending them early only puts them before the outstanding
        Ready's `messages_after_persist`, and Raft does not depend on the order
        of messages."""
        return self._outbox.take_messages()

    def advance(self, ready: Ready) -> None:
        """Acknowledge that everything in `ready` is durable and applied."""
        self._outbox.acknowledge(ready)
        log = self._log
        if ready.snapshot is not None:
            log.stable_snapshot_to(ready.snapshot.index)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        if ready.committed_entries:
            log.applied = max(log.applied, ready.committed_entries[-1].index)
            replication.release_uncommitted(self, ready.committed_entries)
        if self._role is Role.LEADER and replication.maybe_commit(self):
            replication.broadcast_append(self)
        for message in self._outbox.take_steps_on_advance():
            elections.on_own_vote(self, message)
        self._checker.check()

    # ------------------------------------------------------------------- state

    @property
    def id(self) -> int:
        return self._id

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader_id(self) -> int | None:
        return self._leader

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> int:
        return self._vote

    @property
    def commit_index(self) -> int:
        return self._log.commit

    @property
    def applied_index(self) -> int:
        return self._log.applied

    @property
    def last_index(self) -> int:
        return self._log.last_index()

    @property
    def membership(self) -> Membership:
        return self._memberships.current

    @property
    def membership_index(self) -> int:
        """Index of the entry that set the current membership (committed or not),
        or the compaction point: a node that applied it has applied every change."""
        return self._memberships.latest_index()

    @property
    def config(self) -> RaftConfig:
        return self._config

    @property
    def transferee(self) -> int | None:
        """The target of a leadership transfer in progress, if any."""
        return self._transferee

    @property
    def progress(self) -> dict[int, PeerProgress]:
        """Per-peer replication state on the leader (empty elsewhere)."""
        return {peer: progress.view() for peer, progress in self._progress.items()}

    def replicates_to(self, peer: int) -> bool:
        """Whether this leader still tracks `peer`: a member, or a removed one that
        has not yet learned its removal committed (it is still replicated to)."""
        return peer in self._progress

    def membership_at(self, index: int) -> Membership:
        """The membership in force at `index` (after the entries up to it)."""
        return self._memberships.at(index)

    # -------------------------------------------------------- role transitions

    def _reset(self, term: int) -> None:
        """Every role change: a new term clears the vote; timers restart; the
        state of elections and of leadership is dropped."""
        if term != self._term:
            self._term = term
            self._vote = 0
        self._leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_election_timer()
        self._votes = {}
        self._progress = {}
        self._transferee = None
        self._reads.clear()
        self._departing = {}
        self._committed_in_term = False

    def _reset_election_timer(self) -> None:
        ticks = self._config.election_ticks
        self._randomized_timeout = ticks + self._rng.randrange(ticks)

    def _become_follower(self, term: int, leader: int | None) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._leader = leader

    def _become_pre_candidate(self) -> None:
        # Pre-vote changes neither the term nor the vote (§9.6).
        self._reset(self._term)
        self._role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._role = Role.LEADER
        self._leader = self._id
        replication.start_term(self)

    # ------------------------------------------------------------ patch points
    # One small rule each, called through the node (never directly) so that a
    # subclass can override it: the simulator's planted bugs (sim/bugs.py) do.
    # Keep their names and signatures.

    def _can_commit_by_counting(self, index: int) -> bool:
        """§5.4.2 (Figure 8): replicas on a quorum commit `index` only if its entry
        is from the current term; older entries commit indirectly, with it."""
        return self._log.term(index) == self._term

    def _leader_read(self, context: bytes, requester: int) -> bool:
        """Queue a ReadIndex request; return False when over the limit."""
        return readindex.leader_read(self, context, requester)

    def _release_reads(self) -> None:
        """Answer every read whose heartbeat round a quorum of voters has echoed."""
        readindex.release_reads(self)

    # ----------------------------------------------------------------- helpers

    @property
    def _membership(self) -> Membership:
        return self._memberships.current

    def _is_voter(self) -> bool:
        return self._id in self._membership.voters

    def _dispatch(self, message: Message) -> None:
        """Hand `message` to this role's handler (`handlers.HANDLERS`), if it has one."""
        handler = HANDLERS[self._role].get(message.type)
        if handler is not None:
            handler(self, message)

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self._log.commit)

    def _soft_state(self) -> SoftState:
        return SoftState(self._role, self._leader)

    def _state_changed(self, hard_state: HardState, soft_state: SoftState) -> bool:
        """Whether `_hard_state()` or `_soft_state()` would differ from these."""
        return (
            self._term != hard_state.term
            or self._vote != hard_state.vote
            or self._log.commit != hard_state.commit
            or self._role is not soft_state.role
            or self._leader != soft_state.leader_id
        )
