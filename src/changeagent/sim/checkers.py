"""Invariant checkers, fed observations by the simulator after every event.

Each checker is a small class with `observe_*` methods that raise
`InvariantViolation` (never `assert`, which `python -O` strips). They hold only
what they need to stay incremental, so checking after every event costs O(1)
amortized per entry rather than a scan of every log:

- `ElectionSafety`: at most one leader per term.
- `LogMatching`: two durable logs with an entry of the same index and term hold the
  same entry and identical prefixes. Recording, for each (index, term), the entry
  and the term of its predecessor is enough: by induction on the index, equal
  predecessors all the way down mean equal prefixes.
- `LeaderCompleteness`: a leader's log holds every entry committed in an earlier term.
- `StateMachineSafety`: every node applies the same entry at each index, in order,
  with no gaps, never twice.
- `CommitMonotonicity`: a node's commit index never decreases while it lives, and
  its durable commit index never decreases across restarts.
- `NoLostCommits`: an entry that any node applied stays in every later leader's log
  (or in its compacted prefix).
- `CommittedEntryElectability`: no node that lacks a committed entry could collect
  a quorum of votes (Raft's up-to-date check) in its own configuration. This is the
  heart of the Leader Completeness proof, checked at the moment of every commit, so
  a premature commit (Figure 8) is caught even if no later election exploits it.
- `ReadIndexFreshness`: a ReadIndex answer is at least the index of every proposal
  acknowledged before the read was requested.
- `FailStop`: a node whose storage failed never answers a write with 200 (it
  stops applying: whatever it proposed is answered 503 or by another member).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from changeagent.raft.entry import Entry
from changeagent.raft.interfaces import Snapshot


class InvariantViolation(Exception):
    """A safety property of Raft does not hold. `invariant` names which one."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


class LogView(Protocol):
    """A node's log as the node itself sees it (durable plus written-but-unsynced)."""

    def view_snapshot(self) -> Snapshot: ...

    def view_last_index(self) -> int: ...

    def view_term(self, index: int) -> int | None: ...

    def view_entry(self, index: int) -> Entry | None: ...


def entry_identity(entry: Entry) -> tuple[int, int, bytes, str]:
    """What makes two entries 'the same entry': term, type, data and key."""
    return (entry.term, entry.type, entry.data, entry.key)


@dataclass(slots=True)
class ElectionSafety:
    leader_by_term: dict[int, int] = field(default_factory=dict)

    def observe_leader(self, node: int, term: int) -> None:
        known = self.leader_by_term.setdefault(term, node)
        if known != node:
            raise InvariantViolation(
                "election safety", f"nodes {known} and {node} are both leader in term {term}"
            )


@dataclass(slots=True)
class LogMatching:
    # (index, term) -> (entry identity, predecessor term, first node seen with it)
    seen: dict[tuple[int, int], tuple[tuple[int, int, bytes, str], int, int]] = field(
        default_factory=dict
    )

    def observe_durable_append(self, node: int, entries: list[Entry], previous_term: int) -> None:
        """`entries` were just synced to `node`'s log after an entry of `previous_term`."""
        for entry in entries:
            record = (entry_identity(entry), previous_term, node)
            known = self.seen.setdefault((entry.index, entry.term), record)
            if known[0] != record[0]:
                raise InvariantViolation(
                    "log matching",
                    f"index {entry.index} term {entry.term}: node {node} holds {record[0]!r}, "
                    f"node {known[2]} holds {known[0]!r}",
                )
            if known[1] != previous_term:
                raise InvariantViolation(
                    "log matching",
                    f"index {entry.index} term {entry.term}: prefixes differ (predecessor term "
                    f"{previous_term} on node {node}, {known[1]} on node {known[2]})",
                )
            previous_term = entry.term


@dataclass(slots=True)
class ActiveLeader:
    term: int
    verified_upto: int  # committed indices up to here are known to be in its log


@dataclass(slots=True)
class LeaderCompleteness:
    """Tracks the committed prefix and checks it against every leader's log.

    `commit_term[i]` is an upper bound on the term in which index i became
    committed (the reporting node's term when the commit was first seen). Raft
    promises the entry to leaders of every *later* term, so using an upper bound
    can only make the check weaker, never wrong.
    """

    logs: Mapping[int, LogView]
    committed_term: dict[int, int] = field(default_factory=dict)  # index -> entry term
    commit_term: dict[int, int] = field(default_factory=dict)  # index -> term committed in
    watermark: int = 0
    active: dict[int, ActiveLeader] = field(default_factory=dict)

    def observe_commit(self, node: int, node_term: int, previous: int, commit: int) -> None:
        """`node` (in `node_term`) moved its commit index from `previous` to `commit`."""
        log = self.logs[node]
        low = max(previous, log.view_snapshot().index)
        for index in range(low + 1, commit + 1):
            term = log.view_term(index)
            if term is None:
                raise InvariantViolation(
                    "commit beyond log", f"node {node} commits {index} but lacks that entry"
                )
            known = self.committed_term.setdefault(index, term)
            if known != term:
                raise InvariantViolation(
                    "state machine safety",
                    f"index {index} committed with term {known}, node {node} commits term {term}",
                )
            self.commit_term.setdefault(index, node_term)
        self.watermark = max(self.watermark, commit)

    def observe_role(self, node: int, term: int, is_leader: bool) -> None:
        leader = self.active.get(node)
        if not is_leader:
            if leader is not None:
                del self.active[node]
            return
        if leader is None or leader.term != term:
            self.active[node] = ActiveLeader(term, 0)

    def verify(self) -> None:
        """Check the committed entries not yet verified for each active leader."""
        for node in sorted(self.active):
            leader = self.active[node]
            if leader.verified_upto < self.watermark:
                self._verify_leader(node, leader)

    def _verify_leader(self, node: int, leader: ActiveLeader) -> None:
        log = self.logs[node]
        snapshot_index = log.view_snapshot().index
        for index in range(leader.verified_upto + 1, self.watermark + 1):
            commit_term = self.commit_term.get(index)
            if commit_term is None or commit_term >= leader.term or index < snapshot_index:
                continue
            term = log.view_term(index)
            if term != self.committed_term[index]:
                raise InvariantViolation(
                    "leader completeness",
                    f"leader {node} of term {leader.term} has term {term} at index {index}, "
                    f"committed with term {self.committed_term[index]} in term <= {commit_term}",
                )
        leader.verified_upto = self.watermark


@dataclass(slots=True)
class StateMachineSafety:
    applied: dict[int, tuple[int, int, bytes, str]] = field(default_factory=dict)
    last_applied: dict[int, int] = field(default_factory=dict)

    def observe_restore(self, node: int, applied_index: int) -> None:
        """`node` (re)starts, or installs a snapshot, with its state machine at `applied_index`."""
        previous = self.last_applied.get(node, 0)
        if applied_index < previous:
            raise InvariantViolation(
                "state machine safety",
                f"node {node} rewinds its state machine from {previous} to {applied_index}",
            )
        self.last_applied[node] = applied_index

    def observe_apply(self, node: int, entry: Entry) -> None:
        expected = self.last_applied.get(node, 0) + 1
        if entry.index != expected:
            raise InvariantViolation(
                "state machine safety",
                f"node {node} applies index {entry.index}, expected {expected} (gap or repeat)",
            )
        identity = entry_identity(entry)
        known = self.applied.setdefault(entry.index, identity)
        if known != identity:
            raise InvariantViolation(
                "state machine safety",
                f"node {node} applies {identity!r} at {entry.index}; another node applied "
                f"{known!r}",
            )
        self.last_applied[node] = entry.index


@dataclass(slots=True)
class CommitMonotonicity:
    volatile: dict[int, int] = field(default_factory=dict)
    durable: dict[int, int] = field(default_factory=dict)

    def observe_commit(self, node: int, commit: int) -> None:
        previous = self.volatile.get(node, 0)
        if commit < previous:
            raise InvariantViolation(
                "commit monotonicity", f"node {node} commit index went from {previous} to {commit}"
            )
        self.volatile[node] = commit

    def observe_durable_commit(self, node: int, commit: int) -> None:
        previous = self.durable.get(node, 0)
        if commit < previous:
            raise InvariantViolation(
                "commit monotonicity",
                f"node {node} durable commit index went from {previous} to {commit}",
            )
        self.durable[node] = commit

    def observe_restart(self, node: int, commit: int) -> None:
        """A restarted node starts from its durable commit index, which must not have shrunk."""
        self.observe_durable_commit(node, commit)
        self.volatile[node] = commit


@dataclass(slots=True)
class NoLostCommits:
    """Entries any node applied, checked against each new leader's full log."""

    logs: Mapping[int, LogView]
    applied_term: dict[int, int] = field(default_factory=dict)

    def observe_apply(self, entry: Entry) -> None:
        self.applied_term.setdefault(entry.index, entry.term)

    def observe_new_leader(self, node: int, term: int) -> None:
        log = self.logs[node]
        snapshot_index = log.view_snapshot().index
        for index in sorted(self.applied_term):
            if index < snapshot_index:
                continue
            found = log.view_term(index)
            if found != self.applied_term[index]:
                raise InvariantViolation(
                    "no committed entry lost",
                    f"applied entry {index} (term {self.applied_term[index]}) is missing from "
                    f"leader {node} of term {term} (it has term {found})",
                )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A live voter that could campaign: its log's last position and configuration."""

    node: int
    last_term: int
    last_index: int
    holds_entry: bool  # its log contains the committed entry being checked
    voters: frozenset[int]


def could_win(candidate: Candidate, durable_last: Mapping[int, tuple[int, int]]) -> bool:
    """Whether enough voters' durable logs are no more up to date than the candidate's.

    Durable logs are the least up to date a voter can be (a crash loses the rest),
    so this is the most permissive reading of §5.4.1's vote restriction.
    """
    position = (candidate.last_term, candidate.last_index)
    grants = sum(
        1 for voter in candidate.voters if voter in durable_last and durable_last[voter] <= position
    )
    return grants > len(candidate.voters) // 2


@dataclass(slots=True)
class CommittedEntryElectability:
    checked_watermark: int = 0

    def observe_candidates(
        self,
        index: int,
        term: int,
        candidates: list[Candidate],
        durable_last: Mapping[int, tuple[int, int]],
    ) -> None:
        """Entry (`index`, `term`) is committed: nobody lacking it may be electable."""
        for candidate in candidates:
            if candidate.holds_entry or candidate.node not in candidate.voters:
                continue
            if could_win(candidate, durable_last):
                raise InvariantViolation(
                    "committed entry at risk",
                    f"entry {index} (term {term}) is committed, but node {candidate.node} "
                    f"lacks it and could be elected: its log ends at term "
                    f"{candidate.last_term} index {candidate.last_index}, voters' durable "
                    f"logs end at {dict(sorted(durable_last.items()))}",
                )
        self.checked_watermark = max(self.checked_watermark, index)


@dataclass(slots=True)
class ReadIndexFreshness:
    acknowledged_max: int = 0
    required: dict[bytes, int] = field(default_factory=dict)  # read context -> minimum index

    def observe_acknowledged(self, index: int) -> None:
        self.acknowledged_max = max(self.acknowledged_max, index)

    def observe_read_request(self, context: bytes) -> None:
        self.required[context] = self.acknowledged_max

    def observe_read_state(self, node: int, context: bytes, index: int) -> None:
        required = self.required.get(context)
        if required is None:
            raise InvariantViolation(
                "read index freshness", f"node {node} answers unknown read {context!r}"
            )
        if index < required:
            raise InvariantViolation(
                "read index freshness",
                f"node {node} answers read {context!r} with index {index}, but index "
                f"{required} was acknowledged before the read was requested",
            )


@dataclass(slots=True)
class FailStop:
    answered: int = 0  # writes answered 200 by the node that proposed them

    def observe_write_answered(self, node: int, failure: str | None, index: int) -> None:
        """`node` applied the entry it proposed at `index`: its writer gets 200 now."""
        if failure is not None:
            raise InvariantViolation(
                "fail-stop",
                f"node {node} answers the write at {index} with 200 after it failed ({failure})",
            )
        self.answered += 1


@dataclass(slots=True)
class Checkers:
    """All checkers together, sharing the simulator's per-node log views."""

    logs: Mapping[int, LogView]
    election: ElectionSafety = field(default_factory=ElectionSafety)
    log_matching: LogMatching = field(default_factory=LogMatching)
    state_machine: StateMachineSafety = field(default_factory=StateMachineSafety)
    commits: CommitMonotonicity = field(default_factory=CommitMonotonicity)
    reads: ReadIndexFreshness = field(default_factory=ReadIndexFreshness)
    electability: CommittedEntryElectability = field(default_factory=CommittedEntryElectability)
    fail_stop: FailStop = field(default_factory=FailStop)
    completeness: LeaderCompleteness = field(init=False)
    lost: NoLostCommits = field(init=False)

    def __post_init__(self) -> None:
        self.completeness = LeaderCompleteness(self.logs)
        self.lost = NoLostCommits(self.logs)

    def observe_role(self, node: int, term: int, is_leader: bool) -> None:
        was_leader = self.completeness.active.get(node)
        if is_leader:
            self.election.observe_leader(node, term)
        self.completeness.observe_role(node, term, is_leader)
        if is_leader and (was_leader is None or was_leader.term != term):
            self.lost.observe_new_leader(node, term)

    def observe_apply(self, node: int, entry: Entry) -> None:
        self.state_machine.observe_apply(node, entry)
        self.lost.observe_apply(entry)

    def after_event(self) -> None:
        self.completeness.verify()
