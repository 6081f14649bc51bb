"""Leadership transfer (§3.10): the leader brings a voter up to date, then tells
it to campaign at once (TIMEOUT_NOW), past the other voters' leader stickiness.

Plain functions of the `RaftNode` whose state they read and write. Proposals
are dropped while a transfer is pending (`replication.check_can_propose`), so
the target's log can catch up; the leader abandons the transfer when its
election timer next expires (`leader.tick_leader`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeagent.raft import elections, replication
from changeagent.raft.errors import NotLeader
from changeagent.raft.messages import Message
from changeagent.raft.progress import Progress
from changeagent.raft.ready import Role

if TYPE_CHECKING:
    from changeagent.raft.core import RaftNode


def transfer_leadership(node: RaftNode, target: int) -> None:
    """Start handing leadership to `target` (see `RaftNode.transfer_leadership`)."""
    if node._role is not Role.LEADER:
        raise NotLeader(node._leader)
    if target == node._id:
        return
    if target not in node._membership.voters:
        raise ValueError(f"node {target} is not a voter")
    if node._transferee == target:
        return
    node._transferee = target
    # The transfer is abandoned when the election timer next expires.
    node._election_elapsed = 0
    progress = node._progress[target]
    if not maybe_send_timeout_now(node, target, progress):
        replication.maybe_send_append(node, target, progress, send_if_empty=True)


def maybe_send_timeout_now(node: RaftNode, peer: int, progress: Progress) -> bool:
    """Tell the transferee to campaign once its log is as long as ours: with a
    shorter one it could not win the votes (§5.4.1). Return whether told."""
    if peer != node._transferee or progress.match != node._log.last_index():
        return False
    replication.send_timeout_now(node, peer)
    return True


def on_timeout_now(node: RaftNode, message: Message) -> None:
    # §3.10: the leader hands over; campaign at once, past leader stickiness.
    elections.campaign(node, pre_vote=False, transfer=True)
