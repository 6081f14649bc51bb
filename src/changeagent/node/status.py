"""A frozen picture of a node, taken at once: what the API shows, without reaching
into the runtime's objects (which keep changing under a request's feet)."""

from __future__ import annotations

from dataclasses import dataclass

from changeagent.raft import PeerProgress, Role


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: int
    cluster_id: int  # 0: standalone
    state: str  # ChangeAgent's names: Standalone, Leader, Candidate, Follower; Learner, Stopping
    role: Role
    leader_id: int  # 0: none known (always 0 for a standalone node)
    term: int
    first_index: int
    last_index: int
    applied_index: int
    committed_index: int
    voters: frozenset[int]
    learners: frozenset[int]
    peers: dict[int, PeerProgress]  # on the leader: its view of each follower
    long_polls: int
    purge_checks: int
    failure: str | None
    closing: bool


def state_name(role: Role, standalone: bool, closing: bool, learner: bool) -> str:
    """ChangeAgent's state names, plus Learner and Stopping."""
    if closing:
        return "Stopping"
    if standalone:
        return "Standalone"
    if role is Role.LEADER:
        return "Leader"
    if role is Role.CANDIDATE or role is Role.PRE_CANDIDATE:
        return "Candidate"
    return "Learner" if learner else "Follower"
