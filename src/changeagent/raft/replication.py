"""Log replication on the leader (§5.3, §5.4.2): what it sends, and when it commits.

Plain functions of the `RaftNode` whose state they read and write. Each peer's
`Progress` decides what the next APPEND carries (probe, pipelined replicate,
or a SNAPSHOT when the entries it needs are purged); commit counting advances
the commit index once a quorum of voters stores an entry of the leader's term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeagent.raft.entry import ENTRY_TYPE_MEMBERSHIP, ENTRY_TYPE_NOOP, Entry
from changeagent.raft.errors import NotLeader, ProposalDropped
from changeagent.raft.interfaces import Compacted
from changeagent.raft.messages import COMMIT_ONLY_CONTEXT, Message, MessageType
from changeagent.raft.progress import Progress
from changeagent.raft.quorum import quorum_index
from changeagent.raft.ready import ProgressState, Role

if TYPE_CHECKING:
    from changeagent.raft.core import RaftNode

_MT = MessageType
_RESERVED_TYPES = frozenset({ENTRY_TYPE_NOOP, ENTRY_TYPE_MEMBERSHIP})


def propose(node: RaftNode, entries_data: list[tuple[int, bytes, str]]) -> range:
    """Append client entries to the leader's log and send them (see `RaftNode.propose`)."""
    check_can_propose(node)
    limit = node._config.max_message_bytes
    size = 0
    for entry_type, data, _key in entries_data:
        if entry_type in _RESERVED_TYPES:
            raise ValueError(f"entry type {entry_type} is reserved to the Raft core")
        if len(data) > limit:
            raise ProposalDropped(f"entry of {len(data)} bytes exceeds max_message_bytes")
        size += len(data)
    if node._uncommitted_bytes and node._uncommitted_bytes + size > (
        node._config.max_uncommitted_bytes
    ):
        raise ProposalDropped("too many uncommitted bytes; retry later")
    first = node._log.last_index() + 1
    if not entries_data:
        return range(first, first)
    term = node._term
    entries = [
        Entry(index, term, entry_type, data, key)
        for index, (entry_type, data, key) in enumerate(entries_data, first)
    ]
    node._uncommitted_bytes += size
    node._log.append(entries)
    broadcast_append(node)
    return range(first, first + len(entries))


def check_can_propose(node: RaftNode) -> None:
    """Only a leader appends; not while handing over (the target must catch up) nor
    while it is being removed or demoted (it is about to step down)."""
    if node._role is not Role.LEADER:
        raise NotLeader(node._leader)
    if node._transferee is not None:
        raise ProposalDropped("a leadership transfer is in progress")
    if not node._is_voter():
        raise ProposalDropped("this leader is being removed or demoted: it is no voter")


def release_uncommitted(node: RaftNode, entries: tuple[Entry, ...]) -> None:
    """Applied entries no longer count toward `max_uncommitted_bytes`."""
    if node._uncommitted_bytes:
        released = sum(len(entry.data) for entry in entries)
        node._uncommitted_bytes = max(0, node._uncommitted_bytes - released)


def start_term(node: RaftNode) -> None:
    """Initialize a new leader's state (Figure 2: reinitialized after election),
    and append and send the no-op entry that starts its term."""
    log = node._log
    last = log.last_index()
    for member in node._membership.voters | node._membership.learners:
        if member != node._id:
            add_progress(node, member, last + 1)
    # Any membership entry not yet committed counts as pending (one at a time).
    node._pending_conf_index = node._memberships.latest_index()
    node._uncommitted_bytes = 0
    # §8: a no-op entry at the start of the term lets the leader learn which
    # entries are committed (it may count replicas only for its own term).
    node._term_start_index = last + 1
    log.append([Entry(last + 1, node._term, ENTRY_TYPE_NOOP, b"")])
    broadcast_append(node)


def add_progress(node: RaftNode, member: int, next_index: int) -> None:
    """Start tracking `member` optimistically at `next_index` (probing back on rejection)."""
    learner = member in node._membership.learners
    node._progress[member] = Progress(next_index, learner=learner)


def broadcast_append(node: RaftNode) -> None:
    """Send every peer what its window allows (new entries, or the commit index)."""
    for peer, progress in node._progress.items():
        if maybe_send_append(node, peer, progress, send_if_empty=True, commit_only=True):
            fill_window(node, peer, progress)


def fill_window(node: RaftNode, peer: int, progress: Progress) -> None:
    """Pipelining: send `peer` more entries while its in-flight window allows (a
    no-op in the probe state). A peer sent everything is not asked again: that
    call would only look up a term to send nothing, on every write's path."""
    last = node._log.last_index()
    while progress.next <= last and maybe_send_append(node, peer, progress, send_if_empty=False):
        pass


def maybe_send_append(
    node: RaftNode, peer: int, progress: Progress, *, send_if_empty: bool, commit_only: bool = False
) -> bool:
    """Send the next batch to `peer` if its window allows; return whether sent.

    `commit_only`: an empty APPEND to a follower in the replicate state only tells
    it the commit index (a broadcast after a commit), so it is marked to go
    unanswered. The other empty APPENDs ask where the follower stands (a probe, a
    heartbeat's answer that shows an APPEND or its answer was lost, a transfer)
    and are answered."""
    config = node._config
    if progress.is_paused(config.max_inflight_messages):
        return False
    log = node._log
    next_index = progress.next
    last = log.last_index()
    try:
        previous_term = log.term(next_index - 1)
        if next_index <= last:
            high = min(last + 1, next_index + config.max_message_entries)
            entries = tuple(log.slice(next_index, high, config.max_message_bytes))
        else:
            entries = ()
    except Compacted:
        return send_snapshot(node, peer, progress)
    if not entries and not send_if_empty:
        return False
    context = b""
    if entries:
        progress.sent_entries(entries[-1].index)
    elif progress.state is ProgressState.PROBE:
        progress.probe_sent = True
    elif commit_only and progress.state is ProgressState.REPLICATE:
        # Answered, it would tell us nothing the entries' own answers do not: a
        # commit notice per write per follower, and as many answers to read and
        # step. A lost answer is found by the heartbeat's (`on_heartbeat_response`).
        context = COMMIT_ONLY_CONTEXT
    node._outbox.send(
        Message(
            _MT.APPEND,
            node._id,
            peer,
            node._term,
            previous_term,
            next_index - 1,
            entries,
            log.commit,
            context=context,
        )
    )
    return bool(entries)


def send_snapshot(node: RaftNode, peer: int, progress: Progress) -> bool:
    """The entries `peer` needs are purged: send the compaction point instead (§7).
    Returns False, like a `maybe_send_append` that sent no entries."""
    snapshot = node._log.reader.snapshot()
    progress.become_snapshot(snapshot.index, node._tick_count)
    node._outbox.send(Message(_MT.SNAPSHOT, node._id, peer, node._term, snapshot=snapshot))
    return False


def broadcast_heartbeat(node: RaftNode) -> None:
    """Heartbeats carry min(match, commit), so a follower never commits an entry it
    may not hold, and the latest ReadIndex round, for the followers to echo."""
    commit = node._log.commit
    for peer, progress in node._progress.items():
        node._outbox.send(
            Message(
                _MT.HEARTBEAT,
                node._id,
                peer,
                node._term,
                index=node._reads.round,
                commit=min(progress.match, commit),
            )
        )


def send_timeout_now(node: RaftNode, peer: int) -> None:
    node._outbox.send(Message(_MT.TIMEOUT_NOW, node._id, peer, node._term))


def maybe_commit(node: RaftNode) -> bool:
    """§5.3, §5.4.2: commit the highest index stored on a quorum of voters, but
    only by counting replicas of an entry from the current term."""
    voters = node._membership.voters
    if not voters:
        return False
    log = node._log
    candidate = quorum_index(
        log.durable_last_index() if voter == node._id else node._progress[voter].match
        for voter in voters
    )
    if candidate <= log.commit or not node._can_commit_by_counting(candidate):
        return False
    log.commit_to(candidate)
    after_commit(node)
    return True


def after_commit(node: RaftNode) -> None:
    """The leader's commit index moved: reads waiting for the term's first commit
    may go, and a removed leader steps down once its removal is committed."""
    log = node._log
    if not node._committed_in_term and log.commit >= node._term_start_index:
        node._committed_in_term = True
        for context, requester in node._reads.take_waiting():
            node._leader_read(context, requester)
    if not node._is_voter() and log.commit >= node._memberships.latest_index():
        # §4.2.2: a removed (or demoted) leader steps down once its removal is
        # committed, and hands over to the most up-to-date remaining voter at once.
        best = max(
            (peer for peer in node._membership.voters if peer in node._progress),
            key=lambda peer: node._progress[peer].match,
            default=None,
        )
        if best is not None:
            send_timeout_now(node, best)
        node._become_follower(node._term, None)
