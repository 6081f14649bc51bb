"""Single-server membership changes and their encoding in ENTRY_TYPE_MEMBERSHIP data.

Format (big-endian): version u8 (=1), kind u8, node_id u64, then `context`
(opaque to the core; the node layer stores the member's address there).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from changeagent.raft.interfaces import Membership

_HEADER = struct.Struct(">BBQ")
_VERSION = 1


class ConfChangeKind(IntEnum):
    """The single-server changes (each moves at most one server in or out of
    the voters, so every majority of the old voters overlaps every majority of
    the new ones: §4.1's argument holds for all of them)."""

    ADD_LEARNER = 1  # a new member that receives the log but does not vote
    PROMOTE = 2  # a learner becomes a voter
    REMOVE = 3  # a voter or learner leaves (may be the leader itself)
    # Written by a removed node into its own log, never proposed: it starts a
    # one-member cluster of that node (it keeps its data, becomes standalone).
    RESET = 4
    # A voter becomes a learner (may be the leader itself): for the voters it
    # is a removal, and the server goes on receiving the log.
    DEMOTE = 5


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change, applied to the membership as soon as it is appended."""

    kind: ConfChangeKind
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        return _HEADER.pack(_VERSION, int(self.kind), self.node_id) + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Parse `encode()`'s output; raise `ValueError` on anything else."""
        if len(data) < _HEADER.size:
            raise ValueError("membership change too short")
        version, kind, node_id = _HEADER.unpack_from(data)
        if version != _VERSION:
            raise ValueError(f"unknown membership change version {version}")
        if node_id <= 0:
            raise ValueError("membership change names node 0")
        return cls(ConfChangeKind(kind), node_id, bytes(data[_HEADER.size :]))

    def check(self, membership: Membership) -> str | None:
        """Why this change cannot apply to `membership`, or None when it can."""
        if self.kind is ConfChangeKind.RESET:
            return "a reset is written by a removed node into its own log, never proposed"
        member = self.node_id in membership.voters or self.node_id in membership.learners
        if self.kind is ConfChangeKind.ADD_LEARNER and member:
            return f"node {self.node_id} is already a member"
        if self.kind is ConfChangeKind.PROMOTE and self.node_id not in membership.learners:
            return f"node {self.node_id} is not a learner"
        if self.kind is ConfChangeKind.REMOVE:
            if not member:
                return f"node {self.node_id} is not a member"
            if membership.voters == {self.node_id}:
                return "cannot remove the last voter"
        if self.kind is ConfChangeKind.DEMOTE:
            if self.node_id not in membership.voters:
                return f"node {self.node_id} is not a voter"
            if membership.voters == {self.node_id}:
                return "cannot demote the last voter: no voter would be left to form a quorum"
        return None

    def apply(self, membership: Membership) -> Membership:
        """The membership after this change (call `check` first)."""
        if self.kind is ConfChangeKind.RESET:
            return Membership(frozenset({self.node_id}))
        voters, learners = set(membership.voters), set(membership.learners)
        if self.kind is ConfChangeKind.ADD_LEARNER:
            learners.add(self.node_id)
        elif self.kind is ConfChangeKind.PROMOTE:
            learners.discard(self.node_id)
            voters.add(self.node_id)
        elif self.kind is ConfChangeKind.DEMOTE:
            voters.discard(self.node_id)
            learners.add(self.node_id)
        else:
            voters.discard(self.node_id)
            learners.discard(self.node_id)
        return Membership(frozenset(voters), frozenset(learners))
