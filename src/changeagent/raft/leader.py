"""What the leader does on its tick and with its followers' answers.

Plain functions of the `RaftNode` whose state they read and write. The tick
sends heartbeats and, once per election timeout, sweeps for a quorum (§6.2
check-quorum). APPEND and HEARTBEAT responses move each peer's `Progress`,
which may commit entries, confirm ReadIndex rounds or finish a transfer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeagent.raft import readindex, reconfiguration, replication, transfer
from changeagent.raft.errors import InvariantViolation
from changeagent.raft.messages import Message
from changeagent.raft.progress import Progress
from changeagent.raft.quorum import has_quorum
from changeagent.raft.ready import ProgressState

if TYPE_CHECKING:
    from changeagent.raft.core import RaftNode


def tick_leader(node: RaftNode) -> None:
    """Heartbeats every `heartbeat_ticks`; every `election_ticks`, the quorum sweep."""
    node._heartbeat_elapsed += 1
    node._election_elapsed += 1
    if node._election_elapsed >= node._config.election_ticks:
        node._election_elapsed = 0
        quorum_active = quorum_recently_active(node)
        if node._config.check_quorum and not quorum_active:
            # §6.2: a leader that cannot reach a quorum steps down.
            node._become_follower(node._term, None)
            return
        node._transferee = None  # §3.10: abandon a transfer after an election timeout
    if node._heartbeat_elapsed >= node._config.heartbeat_ticks:
        node._heartbeat_elapsed = 0
        replication.broadcast_heartbeat(node)


def quorum_recently_active(node: RaftNode) -> bool:
    """Whether a quorum was heard from since the last sweep; starts a new one."""
    reconfiguration.forget_silent_departed(node)
    voters = node._membership.voters
    active = 1 if node._id in voters else 0
    for peer, progress in node._progress.items():
        if progress.recent_active and peer in voters:
            active += 1
        progress.previous_active = progress.recent_active
        progress.recent_active = False
    return has_quorum(active, len(voters))


def on_append_response(node: RaftNode, message: Message) -> None:
    """A peer stored entries up to `message.index` (or rejected an APPEND): move its
    progress, commit what a quorum now stores, and keep its window full."""
    progress = node._progress.get(message.source)
    if progress is None:
        return
    progress.recent_active = True
    if message.reject:
        on_append_rejected(node, message, progress)
        return
    if not progress.maybe_update(message.index):
        return
    state = progress.state
    if state is ProgressState.PROBE:
        progress.become_replicate()
    elif state is ProgressState.SNAPSHOT and progress.match >= progress.pending_snapshot:
        progress.become_probe()
        progress.become_replicate()
    if replication.maybe_commit(node):
        replication.broadcast_append(node)
    else:
        replication.fill_window(node, message.source, progress)
    transfer.maybe_send_timeout_now(node, message.source, progress)


def on_append_rejected(node: RaftNode, message: Message, progress: Progress) -> None:
    """Fast backoff (etcd's): jump to our last index whose term is <= the follower's
    hint term, instead of stepping back one entry per round trip."""
    hint = message.reject_hint
    if message.log_term > 0:
        hint = node._log.find_conflict_by_term(hint, message.log_term)
    if progress.maybe_decrease_to(message.index, hint):
        if progress.state is ProgressState.REPLICATE:
            progress.become_probe()
        replication.maybe_send_append(node, message.source, progress, send_if_empty=True)


def on_heartbeat_response(node: RaftNode, message: Message) -> None:
    """Heartbeat responses carry what the leader cannot learn otherwise: that an
    APPEND or SNAPSHOT was lost, a ReadIndex round echoed, a removal known."""
    progress = node._progress.get(message.source)
    if progress is None:
        return
    progress.recent_active = True
    if progress.state is ProgressState.SNAPSHOT:
        maybe_retry_snapshot(node, message.source, progress, message.commit)
    progress.probe_sent = False
    if progress.match < node._log.last_index():
        # An APPEND may have been lost: an empty one at `next` makes the
        # follower say where it stands. A full window would block it forever.
        if progress.inflight and len(progress.inflight) >= node._config.max_inflight_messages:
            progress.inflight.popleft()
        replication.maybe_send_append(node, message.source, progress, send_if_empty=True)
    if message.index > progress.read_round:
        progress.read_round = message.index
        readindex.release_reads(node)
    reconfiguration.forget_informed_departed(node, message.source, message.commit)


def maybe_retry_snapshot(
    node: RaftNode, peer: int, progress: Progress, follower_commit: int
) -> None:
    """The node layer reports no lost snapshots, so heartbeat responses decide:
    a follower whose commit index covers the snapshot has installed it (its
    APPEND_RESPONSE was lost), so probe from there; one that still lacks it an
    election timeout after the SNAPSHOT was sent gets it again. Resending at
    most once per election timeout keeps a slow install from causing a storm."""
    if follower_commit >= progress.pending_snapshot:
        progress.become_probe()
    elif node._tick_count - progress.snapshot_sent_tick >= node._config.election_ticks:
        replication.send_snapshot(node, peer, progress)


def on_append_from_other_leader(node: RaftNode, message: Message) -> None:
    # §5.2 Election Safety: at most one leader per term. A second one is a bug to
    # report, not a message to handle.
    raise InvariantViolation(f"two leaders in term {node._term}: {node._id} and {message.source}")
