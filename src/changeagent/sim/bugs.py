"""Deliberately planted bugs, to show that the checkers can fail.

None of them edits the core's files. Each returns `SimOptions` that either swap
in a subclass of `RaftNode` overriding one small method, or make the simulator
itself break the Ready contract:

- `vote-without-up-to-date-check`: the node's `RaftLog` is switched to a subclass
  whose `is_up_to_date` always says yes, so votes ignore §5.4.1.
- `commit-previous-term`: `_can_commit_by_counting` allows counting replicas of
  any entry, not only of current-term entries (the Figure 8 bug of the Raft paper, §5.4.2).
- `ack-before-persist`: the simulator sends `messages_after_persist` (votes and
  append responses) at once, before the fsync completes, so a crash can lose
  what a follower acknowledged or the vote it gave.
- `read-without-quorum-check`: the leader's `ReadIndexQueue` is switched to a
  subclass that needs no quorum, and `_leader_read` releases reads at once, so a
  deposed leader answers ReadIndex from its stale commit index.

The patch points are the core's private methods (`RaftLog.is_up_to_date`,
`RaftNode._can_commit_by_counting`, `RaftNode._leader_read`,
`ReadIndexQueue.confirmed`); if the core renames them, the
planted-bug tests fail loudly rather than silently testing nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from changeagent.raft.config import RaftConfig
from changeagent.raft.core import RaftNode
from changeagent.raft.entry import HardState
from changeagent.raft.readindex import PendingRead
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
    def factory(
        config: RaftConfig, log: SimLog, hard_state: HardState, rng: random.Random, applied: int
    ) -> RaftNode:
        return _CountingCommitNode(config, log, hard_state, rng, applied=applied)

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

    def factory(
        config: RaftConfig, log: SimLog, hard_state: HardState, rng: random.Random, applied: int
    ) -> RaftNode:
        return UnconfirmedReadNode(config, log, hard_state, rng, applied=applied)

    return SimOptions(node_factory=factory)


def _ack_before_persist() -> SimOptions:
    return SimOptions(ack_before_persist=True)


PLANTED_BUGS: dict[str, Callable[[], SimOptions]] = {
    "vote-without-up-to-date-check": _vote_without_up_to_date_check,
    "commit-previous-term": _commit_previous_term,
    "ack-before-persist": _ack_before_persist,
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
