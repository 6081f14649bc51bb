"""Who handles what: one function per (role, message type).

`RaftNode.step` looks its handler up here once the term rules let a message
through; a type missing from a role's table is ignored. A candidate hands the
leader's messages of its term on to the follower's handler after stepping down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeagent.raft import elections, follower, leader, readindex, transfer
from changeagent.raft.messages import Message, MessageType
from changeagent.raft.ready import Role

if TYPE_CHECKING:
    from collections.abc import Callable

    from changeagent.raft.core import RaftNode

    Handler = Callable[[RaftNode, Message], None]

_MT = MessageType


def _handlers() -> dict[Role, dict[MessageType, Handler]]:
    """One handler per (role, message type); a type missing from a role is ignored."""
    vote = elections.on_vote_request
    as_follower: dict[MessageType, Handler] = {
        _MT.PRE_VOTE: vote,
        _MT.VOTE: vote,
        _MT.APPEND: follower.on_append,
        _MT.HEARTBEAT: follower.on_heartbeat,
        _MT.SNAPSHOT: follower.on_snapshot,
        _MT.TIMEOUT_NOW: transfer.on_timeout_now,
        _MT.READ_INDEX_RESPONSE: readindex.on_read_index_response,
    }
    to_follower = elections.on_leader_message_as_candidate
    as_candidate: dict[MessageType, Handler] = {
        _MT.PRE_VOTE: vote,
        _MT.VOTE: vote,
        _MT.PRE_VOTE_RESPONSE: elections.on_vote_response,
        _MT.VOTE_RESPONSE: elections.on_vote_response,
        _MT.APPEND: to_follower,
        _MT.HEARTBEAT: to_follower,
        _MT.SNAPSHOT: to_follower,
    }
    other_leader = leader.on_append_from_other_leader
    as_leader: dict[MessageType, Handler] = {
        _MT.PRE_VOTE: vote,
        _MT.VOTE: vote,
        _MT.APPEND: other_leader,
        _MT.HEARTBEAT: other_leader,
        _MT.SNAPSHOT: other_leader,
        _MT.APPEND_RESPONSE: leader.on_append_response,
        _MT.HEARTBEAT_RESPONSE: leader.on_heartbeat_response,
        _MT.READ_INDEX: readindex.on_read_index_request,
    }
    return {
        Role.FOLLOWER: as_follower,
        Role.PRE_CANDIDATE: as_candidate,
        Role.CANDIDATE: as_candidate,
        Role.LEADER: as_leader,
    }


HANDLERS = _handlers()
