"""The core's exception hierarchy, drawn once.

`RaftError` is the root. Local misuse that the caller can act on (a proposal
sent to a follower, a full pipeline) has its own type so the node layer can map
it to an HTTP status in one place; `InvariantViolation` means the core itself
(or its storage) is broken and the node must stop.
"""

from __future__ import annotations


class RaftError(Exception):
    """Root of every error raised by `changeagent.raft`."""


class ConfigError(RaftError):
    """A `RaftConfig` value is out of range; raised before anything starts."""


class NotLeader(RaftError):
    """The request needs the leader, and this node is not it.

    `leader_hint` is the node id of the leader this node believes in, or None
    when it knows of none (an election is in progress).
    """

    def __init__(self, leader_hint: int | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The leader refused the proposal; the caller may retry later.

    Reasons: a leadership transfer is in progress, the uncommitted-bytes limit
    is reached, an entry is larger than a message may be, the leader is being
    removed, or another membership change is still pending.
    """


class MembershipChangeRejected(ProposalDropped):
    """The membership change is invalid, or (`busy`) cannot be made yet: another
    one is still pending, or the leader has not committed an entry of its term."""

    def __init__(self, message: str, *, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


class InvariantViolation(RaftError):
    """A safety invariant of the core does not hold: a bug, or corrupt storage.

    Raised instead of `assert` so that `python -O` cannot strip the check.
    """
