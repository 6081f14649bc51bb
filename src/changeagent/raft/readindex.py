"""ReadIndex (§6.4), without leases: the leader's queue and the protocol around it.

A read is answered with the commit index at the time of the request, once a
majority of voters has echoed a heartbeat round sent after the request: that
proves no newer leader existed when the read arrived. Rounds are numbered;
one echo of round r confirms every read of round <= r. Before the leader has
committed an entry of its own term, its commit index may be stale, so reads
wait in `waiting` until then.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from changeagent.raft import replication
from changeagent.raft.errors import NotLeader, ProposalDropped
from changeagent.raft.messages import Message, MessageType
from changeagent.raft.quorum import quorum_size
from changeagent.raft.ready import ReadState, Role

if TYPE_CHECKING:
    from changeagent.raft.core import RaftNode

_MT = MessageType


class PendingRead(NamedTuple):
    read_round: int  # heartbeat round that confirms it
    commit_index: int  # the leader's commit index when the request arrived
    context: bytes
    requester: int  # node id to answer (the leader itself for local reads)


class ReadIndexQueue:
    """Reads waiting for confirmation, bounded by `limit` each."""

    __slots__ = ("limit", "pending", "round", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.round = 0
        self.pending: deque[PendingRead] = deque()
        self.waiting: list[tuple[bytes, int]] = []

    def wait(self, context: bytes, requester: int) -> bool:
        """Park a read until the term's first commit; False when full."""
        if len(self.waiting) >= self.limit:
            return False
        self.waiting.append((context, requester))
        return True

    def take_waiting(self) -> list[tuple[bytes, int]]:
        waiting, self.waiting = self.waiting, []
        return waiting

    def add(self, commit_index: int, context: bytes, requester: int) -> bool:
        """Queue a read for the next round; False when full."""
        if len(self.pending) >= self.limit:
            return False
        self.round += 1
        self.pending.append(PendingRead(self.round, commit_index, context, requester))
        return True

    def confirmed(self, echoed_rounds: list[int], quorum: int) -> list[PendingRead]:
        """Pop the reads whose round at least `quorum` voters have echoed."""
        released: list[PendingRead] = []
        pending = self.pending
        while pending:
            read_round = pending[0].read_round
            if sum(1 for echoed in echoed_rounds if echoed >= read_round) < quorum:
                break
            released.append(pending.popleft())
        return released

    def clear(self) -> None:
        self.pending.clear()
        self.waiting.clear()


# The protocol: plain functions of the `RaftNode` whose state they read and write.


def request_read(node: RaftNode, context: bytes) -> None:
    """Serve `node.read_index`: queue the read on the leader, forward it elsewhere."""
    if node._role is Role.LEADER:
        if not node._leader_read(context, node._id):
            raise ProposalDropped("too many pending reads")
    elif node._leader is not None:
        node._outbox.send(
            Message(_MT.READ_INDEX, node._id, node._leader, node._term, context=context)
        )
    else:
        raise NotLeader(None)


def on_read_index_request(node: RaftNode, message: Message) -> None:
    """Queue a read that a follower forwarded; answer a refusal when the queue is full."""
    if not node._leader_read(message.context, message.source):
        node._outbox.send(
            Message(
                _MT.READ_INDEX_RESPONSE,
                node._id,
                message.source,
                node._term,
                reject=True,
                context=message.context,
            )
        )


def on_read_index_response(node: RaftNode, message: Message) -> None:
    """The leader confirmed a forwarded read: serve it once `index` is applied here.
    A refusal is dropped (Ready has no place for it): the node times the read out."""
    if not message.reject:
        node._outbox.add_read_state(ReadState(message.index, message.context))


def leader_read(node: RaftNode, context: bytes, requester: int) -> bool:
    """Queue a ReadIndex request; return False when over the limit."""
    if not node._committed_in_term:
        # §6.4: the leader's commit index is current only once it has
        # committed an entry of its own term.
        return node._reads.wait(context, requester)
    if not node._reads.add(node._log.commit, context, requester):
        return False
    if node._membership.voters <= {node._id}:
        release_reads(node)
    else:
        replication.broadcast_heartbeat(node)
    return True


def release_reads(node: RaftNode) -> None:
    """Answer every read whose heartbeat round a quorum of voters has echoed."""
    voters = node._membership.voters
    echoed = [progress.read_round for peer, progress in node._progress.items() if peer in voters]
    if node._id in voters:
        echoed.append(node._reads.round)
    for read in node._reads.confirmed(echoed, quorum_size(len(voters))):
        if read.requester == node._id:
            node._outbox.add_read_state(ReadState(read.commit_index, read.context))
        else:
            node._outbox.send(
                Message(
                    _MT.READ_INDEX_RESPONSE,
                    node._id,
                    read.requester,
                    node._term,
                    index=read.commit_index,
                    context=read.context,
                )
            )
