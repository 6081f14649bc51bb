"""Each checker, fed a hand-made bad history, raises; fed a good one, stays quiet."""

from __future__ import annotations

import pytest

from changeagent.raft.entry import Entry, HardState
from changeagent.raft.interfaces import Snapshot
from changeagent.sim.checkers import (
    Checkers,
    CommitMonotonicity,
    ElectionSafety,
    FailStop,
    InvariantViolation,
    LogMatching,
    ReadIndexFreshness,
    StateMachineSafety,
)
from changeagent.sim.log import SimLog


def entry(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(index, term, 0, data or f"i{index}t{term}".encode())


def log_with(terms: list[int]) -> SimLog:
    log = SimLog()
    log.stage(
        HardState(term=max(terms, default=0)), None, [entry(i + 1, t) for i, t in enumerate(terms)]
    )
    log.sync()
    return log


def test_two_leaders_in_one_term() -> None:
    checker = ElectionSafety()
    checker.observe_leader(1, 3)
    checker.observe_leader(1, 3)
    checker.observe_leader(2, 4)
    with pytest.raises(InvariantViolation, match="election safety"):
        checker.observe_leader(2, 3)


def test_same_index_and_term_different_entry() -> None:
    checker = LogMatching()
    checker.observe_durable_append(1, [entry(1, 1, b"a")], 0)
    with pytest.raises(InvariantViolation, match="log matching"):
        checker.observe_durable_append(2, [entry(1, 1, b"b")], 0)


def test_same_index_and_term_different_prefix() -> None:
    checker = LogMatching()
    checker.observe_durable_append(1, [entry(1, 1), entry(2, 2)], 0)
    checker.observe_durable_append(2, [entry(1, 1), entry(2, 2)], 0)  # identical: fine
    with pytest.raises(InvariantViolation, match="prefixes differ"):
        checker.observe_durable_append(3, [entry(2, 2)], 5)


def test_apply_with_a_gap_a_repeat_or_a_different_entry() -> None:
    checker = StateMachineSafety()
    checker.observe_apply(1, entry(1, 1))
    with pytest.raises(InvariantViolation, match="gap or repeat"):
        checker.observe_apply(1, entry(3, 1))
    with pytest.raises(InvariantViolation, match="gap or repeat"):
        checker.observe_apply(1, entry(1, 1))
    with pytest.raises(InvariantViolation, match="another node applied"):
        checker.observe_apply(2, entry(1, 2))


def test_state_machine_cannot_rewind() -> None:
    checker = StateMachineSafety()
    checker.observe_restore(1, 5)
    with pytest.raises(InvariantViolation, match="rewinds"):
        checker.observe_restore(1, 4)


def test_commit_index_decreasing() -> None:
    checker = CommitMonotonicity()
    checker.observe_commit(1, 5)
    with pytest.raises(InvariantViolation, match="commit monotonicity"):
        checker.observe_commit(1, 4)
    checker.observe_durable_commit(1, 3)
    checker.observe_restart(1, 3)  # a restart may go back to the durable commit index
    checker.observe_commit(1, 3)
    with pytest.raises(InvariantViolation, match="durable commit"):
        checker.observe_restart(1, 2)


def test_leader_missing_a_committed_entry() -> None:
    logs = {1: log_with([1, 1, 2]), 2: log_with([1, 1, 3])}
    checkers = Checkers(logs)
    checkers.completeness.observe_commit(1, node_term=2, previous=0, commit=3)
    checkers.observe_role(2, 3, is_leader=True)
    with pytest.raises(InvariantViolation, match="leader completeness"):
        checkers.after_event()


def test_leader_of_an_older_term_is_not_bound_by_later_commits() -> None:
    logs = {1: log_with([1, 1, 2]), 2: log_with([1, 1, 3])}
    checkers = Checkers(logs)
    checkers.observe_role(1, 2, is_leader=True)  # a stale leader of term 2
    checkers.completeness.observe_commit(2, node_term=3, previous=0, commit=3)
    checkers.after_event()


def test_node_committing_what_it_does_not_have() -> None:
    checkers = Checkers({1: log_with([1])})
    with pytest.raises(InvariantViolation, match="commit beyond log"):
        checkers.completeness.observe_commit(1, node_term=1, previous=0, commit=2)


def test_two_nodes_committing_different_entries() -> None:
    checkers = Checkers({1: log_with([1, 1]), 2: log_with([1, 2])})
    checkers.completeness.observe_commit(1, node_term=1, previous=0, commit=2)
    with pytest.raises(InvariantViolation, match="state machine safety"):
        checkers.completeness.observe_commit(2, node_term=2, previous=0, commit=2)


def test_applied_entry_lost_by_a_new_leader() -> None:
    logs = {1: log_with([1, 1]), 2: log_with([1])}
    checkers = Checkers(logs)
    checkers.observe_apply(1, logs[1].entry_at(1))
    checkers.observe_apply(1, logs[1].entry_at(2))
    with pytest.raises(InvariantViolation, match="no committed entry lost"):
        checkers.observe_role(2, 2, is_leader=True)


def test_applied_entry_in_a_compacted_prefix_counts_as_kept() -> None:
    logs = {1: log_with([1, 1, 1])}
    logs[1].compact(Snapshot(index=2, term=1))
    checkers = Checkers(logs)
    checkers.lost.applied_term.update({1: 1, 2: 1, 3: 1})
    checkers.observe_role(1, 2, is_leader=True)


def test_stale_read_index() -> None:
    checker = ReadIndexFreshness()
    checker.observe_acknowledged(7)
    checker.observe_read_request(b"r1")
    checker.observe_acknowledged(9)
    checker.observe_read_state(1, b"r1", 7)  # 9 was acknowledged after the request
    checker.observe_read_request(b"r2")
    with pytest.raises(InvariantViolation, match="read index freshness"):
        checker.observe_read_state(1, b"r2", 8)
    with pytest.raises(InvariantViolation, match="unknown read"):
        checker.observe_read_state(1, b"r3", 8)


def test_committed_entry_held_by_no_quorum_member_that_outranks_a_candidate() -> None:
    from changeagent.sim.checkers import Candidate, CommittedEntryElectability

    checker = CommittedEntryElectability()
    voters = frozenset({1, 2, 3})
    # Figure 8: entry 2 (term 2) on nodes 1 and 3, whose logs end in term 2, while
    # node 2's log ends in term 3: node 2 outranks them and can be elected.
    durable = {1: (2, 2), 2: (3, 2), 3: (2, 2)}
    safe = Candidate(1, 2, 2, True, voters)
    at_risk = Candidate(2, 3, 2, False, voters)
    checker.observe_candidates(2, 2, [safe], durable)
    with pytest.raises(InvariantViolation, match="committed entry at risk"):
        checker.observe_candidates(2, 2, [safe, at_risk], durable)
    # Once the leader's term-4 entry is durable on a quorum, node 2 cannot win.
    durable = {1: (4, 3), 2: (3, 2), 3: (4, 3)}
    checker.observe_candidates(3, 4, [Candidate(2, 3, 2, False, voters)], durable)


def test_a_failed_node_answering_a_write() -> None:
    checker = FailStop()
    checker.observe_write_answered(1, None, 5)
    with pytest.raises(InvariantViolation, match="fail-stop"):
        checker.observe_write_answered(1, "injected storage error in CompactionWrite", 6)
