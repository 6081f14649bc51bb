"""Membership changes (§4.1, §4.2.2): proposing one, applying them, departing members.

Plain functions of the `RaftNode` whose state they read and write. A change
takes effect on append, committed or not, so both the leader (on proposal) and
followers (on APPEND, or on truncation, which reverts it) apply it here. The
leader keeps replicating to removed members until they know their removal
committed, so that they stop campaigning (`elections.can_campaign`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeagent.raft import replication
from changeagent.raft.confchange import ConfChange, ConfChangeKind
from changeagent.raft.entry import ENTRY_TYPE_MEMBERSHIP, Entry
from changeagent.raft.errors import MembershipChangeRejected
from changeagent.raft.quorum import has_quorum, quorum_size
from changeagent.raft.ready import ProgressState, Role

if TYPE_CHECKING:
    from changeagent.raft.core import RaftNode


def propose_membership(node: RaftNode, change: ConfChange) -> int:
    """Append `change` on the leader and send it (see `RaftNode.propose_membership`)."""
    replication.check_can_propose(node)
    if node._pending_conf_index > node._log.commit:
        raise MembershipChangeRejected("another membership change is still pending", busy=True)
    if not node._committed_in_term:
        raise MembershipChangeRejected(
            "the leader has not committed an entry of its term", busy=True
        )
    reason = change.check(node._membership)
    if reason is not None:
        raise MembershipChangeRejected(reason)
    if change.kind is ConfChangeKind.PROMOTE:
        progress = node._progress.get(change.node_id)
        if progress is None or progress.state is not ProgressState.REPLICATE:
            raise MembershipChangeRejected(f"learner {change.node_id} is not caught up", busy=True)
    elif change.kind is ConfChangeKind.DEMOTE:
        check_quorum_after_demotion(node, change.node_id)
    index = node._log.last_index() + 1
    entry = Entry(index, node._term, ENTRY_TYPE_MEMBERSHIP, change.encode())
    node._log.append([entry])
    node._pending_conf_index = index
    on_entries_appended(node, [entry])
    replication.broadcast_append(node)
    return index


def check_quorum_after_demotion(node: RaftNode, demoted: int) -> None:
    """Refuse a demotion after which the voters we can reach are no majority of
    the remaining voters: it takes effect on append, so the cluster could commit
    nothing (the demotion included) until enough of them came back."""
    voters = node._membership.voters - {demoted}
    reachable = sum(
        1
        for voter in voters
        if voter == node._id or (voter in node._progress and node._progress[voter].reachable())
    )
    if not has_quorum(reachable, len(voters)):
        raise MembershipChangeRejected(
            f"the demotion would leave {len(voters)} voters, of which {reachable} answered "
            f"recently: no quorum ({quorum_size(len(voters))} needed)",
            busy=True,
        )


def on_entries_appended(node: RaftNode, entries: list[Entry] | tuple[Entry, ...]) -> None:
    """§4.1: a server uses the latest configuration in its log, committed or not,
    so a membership entry takes effect as soon as it is appended."""
    if node._memberships.record(entries):
        on_membership_changed(node)


def on_membership_changed(node: RaftNode) -> None:
    """On the leader: track the new members' progress, and remember removed ones as
    departing, still replicated to until they know their removal committed."""
    if node._role is not Role.LEADER:
        return
    membership = node._membership
    members = membership.voters | membership.learners
    for peer in node._progress:
        if peer not in members and peer not in node._departing:
            node._departing[peer] = node._memberships.latest_index()
    next_index = node._log.last_index() + 1
    for member in members:
        if member == node._id:
            continue
        node._departing.pop(member, None)
        progress = node._progress.get(member)
        if progress is None:
            replication.add_progress(node, member, next_index)
        else:
            progress.learner = member in membership.learners
    if node._transferee is not None and node._transferee not in membership.voters:
        node._transferee = None
    # A membership change may lower the quorum: maybe something commits now.
    if replication.maybe_commit(node):
        replication.broadcast_append(node)


def forget_informed_departed(node: RaftNode, peer: int, follower_commit: int) -> None:
    """Stop replicating to a removed member whose heartbeat response shows that
    it knows its removal committed: it no longer campaigns (`can_campaign`)."""
    removal_index = node._departing.get(peer)
    if removal_index is not None and follower_commit >= removal_index:
        del node._progress[peer]
        del node._departing[peer]


def forget_silent_departed(node: RaftNode) -> None:
    """On the check-quorum sweep, stop replicating to removed members that were
    silent for an election timeout after their removal committed. (The others
    are forgotten once a heartbeat response shows they know it committed.)"""
    commit = node._log.commit
    for peer, removal_index in list(node._departing.items()):
        progress = node._progress[peer]
        if not progress.recent_active and commit >= removal_index:
            del node._progress[peer]
            del node._departing[peer]
