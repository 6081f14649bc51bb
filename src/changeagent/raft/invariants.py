"""Invariants of one core, checked after every step, tick, proposal and advance.

They are cheap (constant work per peer) so they stay on in production, and they
raise `InvariantViolation` rather than `assert` so `python -O` keeps them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeagent.raft.errors import InvariantViolation
from changeagent.raft.ready import Role

if TYPE_CHECKING:
    from changeagent.raft.core import RaftNode


class InvariantChecker:
    """Remembers what must never go backwards (term, commit) between checks."""

    __slots__ = ("_commit", "_node", "_term")

    def __init__(self, node: RaftNode) -> None:
        self._node = node
        self._term = node.term
        self._commit = node.commit_index

    def check(self) -> None:
        node = self._node
        log = node._log  # the checker is part of the core
        commit, term = log.commit, node._term
        if term < self._term:
            _fail(node, f"term went back from {self._term} to {term}")
        if commit < self._commit:
            _fail(node, f"commit index went back from {self._commit} to {commit}")
        last = log.last_index()
        if commit > last:
            _fail(node, f"commit index {commit} is beyond the last index {last}")
        if log.applied > commit:
            _fail(node, f"applied index {log.applied} is beyond the commit index {commit}")
        self._check_role(node, last)
        self._term = term
        self._commit = commit

    @staticmethod
    def _check_role(node: RaftNode, last: int) -> None:
        role, leader = node._role, node._leader
        if role is Role.LEADER:
            if leader != node.id:
                _fail(node, f"a leader that believes {leader} leads")
            window = node.config.max_inflight_messages
            for peer, progress in node._progress.items():
                if not 0 <= progress.match < progress.next <= last + 1:
                    _fail(node, f"peer {peer}: match {progress.match} next {progress.next}")
                if len(progress.inflight) > window:
                    _fail(node, f"peer {peer}: in-flight window overflow")
        elif role is Role.CANDIDATE:
            if node._vote != node.id or leader is not None:
                _fail(node, "a candidate must vote for itself and know no leader")
        elif role is Role.PRE_CANDIDATE:
            if leader is not None:
                _fail(node, "a pre-candidate must know no leader")
        elif leader == node.id:
            _fail(node, "a follower that believes it leads")


def _fail(node: RaftNode, what: str) -> None:
    raise InvariantViolation(f"node {node.id} term {node.term}: {what}")
