"""Deliberately planted bugs, to show that the checkers can fail.

None of them edits production files. Each returns `SimOptions` that swap in a
subclass of a production class (`RaftNode`, `ReadyPlanner`, `ReplicatedState`)
overriding one small method, or make the simulator's model of the node's
runtime break its rule:

- `vote-without-up-to-date-check`: the node's `RaftLog` is switched to a subclass
  whose `is_up_to_date` always says yes, so votes ignore §5.4.1.
- `commit-previous-term`: `_can_commit_by_counting` allows counting replicas of
  any entry, not only of current-term entries (the Figure 8 bug of the Raft paper, §5.4.2).
- `ack-before-persist`: a `ReadyPlanner` whose plans send `messages_after_persist`
  (votes and append responses) before the `Persist` step, so a crash can lose
  what a follower acknowledged or the vote it gave.
- `acks-sent-during-write`: `RaftNode.take_messages`, which the runtime calls on a
  tick while a Ready's write is in flight (heartbeats need not wait for a slow
  disk), also hands out what waits for a write (votes, append responses), which
  then leave before the write they promise is durable.
- `compact-over-pending-snapshot` (scenario 1): `RaftNode.compact` as it was
  before the fix: it ignores a snapshot stepped in while the Ready that applied
  the purge was being written, reads the term at the purge point and raises
  `Compacted` (in production the Raft loop stopped for good).
- `compaction-failure-keeps-running` (scenario 5): a storage error in the
  compaction write marks the node failed (it refuses writes) but does not halt
  Raft: a failed leader goes on heartbeating, so nobody replaces it.
- `recovery-ignores-must-leave` (scenario 7): `ReplicatedState.recover` forgets
  `must_leave`, so a node removed just before it stopped never leaves.
- `read-without-quorum-check`: the leader's `ReadIndexQueue` is switched to a
  subclass that needs no quorum, and `_leader_read` releases reads at once, so a
  deposed leader answers ReadIndex from its stale commit index.

The patch points are the core's private methods (`RaftLog.is_up_to_date`,
`RaftNode._can_commit_by_counting`, `RaftNode._leader_read`,
`ReadIndexQueue.confirmed`, `RaftLog.term` through `RaftNode.compact`) and the
public `ReadyPlanner.plan`, `ReplicatedState.recover` and `RaftNode.take_messages`
(with the outbox's private lists); if they are renamed,
the planted-bug tests fail loudly rather than silently testing nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from changeagent.config import Settings
from changeagent.node.ready_plan import Persist, ReadyPlanner, Send, Step
from changeagent.node.replicated_state import ReplicatedState
from changeagent.raft.config import RaftConfig
from changeagent.raft.core import RaftNode
from changeagent.raft.entry import Entry, HardState
from changeagent.raft.interfaces import Snapshot
from changeagent.raft.messages import Message
from changeagent.raft.readindex import PendingRead
from changeagent.raft.ready import Ready
from changeagent.sim.cluster import SimOptions
from changeagent.sim.log import SimLog


def _vote_without_up_to_date_check() -> SimOptions:
    from changeagent.raft.log import RaftLog

    class GullibleLog(RaftLog):
        __slots__ = ()

        def is_up_to_date(self, last_term: int, last_index: int) -> bool:
            return True

    def factory(
        config: RaftConfig, log: SimLog, hard_state: HardState, rng: random.Random, applied: int
    ) -> RaftNode:
        node = RaftNode(config, log, hard_state, rng, applied=applied)
        node._log.__class__ = GullibleLog
        return node

    return SimOptions(node_factory=factory)


class _CountingCommitNode(RaftNode):
    """Commits any entry stored on a quorum, whatever its term (wrong: Figure 8)."""

    def _can_commit_by_counting(self, index: int) -> bool:
        return True


def _commit_previous_term() -> SimOptions:
    return _nodes_of(_CountingCommitNode)


def _nodes_of(node_class: type[RaftNode]) -> SimOptions:
    """Options whose nodes are `node_class` instances (a subclass with the bug)."""

    def factory(
        config: RaftConfig, log: SimLog, hard_state: HardState, rng: random.Random, applied: int
    ) -> RaftNode:
        return node_class(config, log, hard_state, rng, applied=applied)

    return SimOptions(node_factory=factory)


def _read_without_quorum_check() -> SimOptions:
    from changeagent.raft.readindex import ReadIndexQueue

    class QuorumOfOneReads(ReadIndexQueue):
        __slots__ = ()

        def confirmed(self, echoed_rounds: list[int], quorum: int) -> list[PendingRead]:
            return super().confirmed(echoed_rounds, 1)

    class UnconfirmedReadNode(RaftNode):
        def _leader_read(self, context: bytes, requester: int) -> bool:
            self._reads.__class__ = QuorumOfOneReads
            accepted = super()._leader_read(context, requester)
            self._release_reads()
            return accepted

    return _nodes_of(UnconfirmedReadNode)


class _EagerAckPlanner(ReadyPlanner):
    """Sends what must wait for the write (votes, acknowledgements) before it."""

    def plan(self, ready: Ready, durable_last_index: int) -> list[Step]:
        steps = super().plan(ready, durable_last_index)
        for position, step in enumerate(steps[:-1]):
            after = steps[position + 1]
            if isinstance(step, Persist) and isinstance(after, Send):
                steps[position], steps[position + 1] = after, step
                break
        return steps


def _ack_before_persist() -> SimOptions:
    return SimOptions(planner_factory=_EagerAckPlanner)


class _AcksDuringWriteNode(RaftNode):
    """`take_messages` that also takes the messages that wait for the write."""

    def take_messages(self) -> tuple[Message, ...]:
        outbox = self._outbox
        waiting = tuple(outbox._messages_after_persist)
        outbox._messages_after_persist.clear()
        return super().take_messages() + waiting


def _acks_sent_during_write() -> SimOptions:
    return _nodes_of(_AcksDuringWriteNode)


class _CompactOverPendingSnapshotNode(RaftNode):
    """`RaftNode.compact` before the fix: a pending snapshot is not looked at."""

    def compact(self, index: int, data: bytes) -> Snapshot | None:
        if index > self._log.applied:
            raise ValueError(f"cannot compact to {index}: only {self._log.applied} is applied")
        current = self._log.reader.snapshot().index
        if index < current:
            raise ValueError(f"cannot compact to {index}: already compacted to {current}")
        snapshot = Snapshot(index, self._log.term(index), self.membership_at(index), data)
        self._memberships.compact(index)
        return snapshot


def _compact_over_pending_snapshot() -> SimOptions:
    return _nodes_of(_CompactOverPendingSnapshotNode)


def _compaction_failure_keeps_running() -> SimOptions:
    return SimOptions(compaction_failure_halts=False)


class _ForgetfulRecovery(ReplicatedState):
    """Recovery before the fix: the removal drops the address, nobody leaves."""

    @classmethod
    def recover(
        cls,
        node_id: int,
        snapshot_data: bytes,
        default: Settings,
        committed: Iterable[Entry],
        *,
        members: Iterable[int] = (),
        removed_by_snapshot: bool = False,
    ) -> ReplicatedState:
        state = super().recover(
            node_id,
            snapshot_data,
            default,
            committed,
            members=members,
            removed_by_snapshot=removed_by_snapshot,
        )
        state.must_leave = False
        return state


def _recovery_ignores_must_leave() -> SimOptions:
    return SimOptions(replicated_state=_ForgetfulRecovery)


PLANTED_BUGS: dict[str, Callable[[], SimOptions]] = {
    "vote-without-up-to-date-check": _vote_without_up_to_date_check,
    "commit-previous-term": _commit_previous_term,
    "ack-before-persist": _ack_before_persist,
    "acks-sent-during-write": _acks_sent_during_write,
    "compact-over-pending-snapshot": _compact_over_pending_snapshot,
    "compaction-failure-keeps-running": _compaction_failure_keeps_running,
    "recovery-ignores-must-leave": _recovery_ignores_must_leave,
}

# Caught only rarely (about 1 hostile seed in 1,000): CheckQuorum makes a deposed
# leader step down before the new leader can commit anything, so the window for a
# stale answer is almost closed. Kept for manual hunts (--bug), not in the tests.
RARELY_CAUGHT_BUGS: dict[str, Callable[[], SimOptions]] = {
    "read-without-quorum-check": _read_without_quorum_check,
}


def options_for_bug(bug: str | None) -> SimOptions:
    """Default options, or the options that plant `bug`."""
    if bug is None:
        return SimOptions()
    if bug in RARELY_CAUGHT_BUGS:
        return RARELY_CAUGHT_BUGS[bug]()
    return PLANTED_BUGS[bug]()
