"""Rules from the dissertation beyond basic Raft: PreVote (§9.6), leader stickiness
(§4.2.3), CheckQuorum (§6.2), leadership transfer (§3.10), ReadIndex (§6.4) and
log compaction with snapshots (§5.4.x of the paper, §5 of the dissertation's
compaction chapter: "InstallSnapshot")."""

from __future__ import annotations

import random

import pytest

from changeagent.raft import (
    TRANSFER_CONTEXT,
    Entry,
    HardState,
    Membership,
    Message,
    MessageType,
    ProgressState,
    ProposalDropped,
    RaftNode,
    ReadState,
    Role,
    Snapshot,
)
from changeagent.raft.memory_log import MemoryLog

from .harness import Cluster, default_config

MT = MessageType


def test_9_6_prevote_an_isolated_node_does_not_inflate_its_term() -> None:
    """§9.6: with PreVote, a server that cannot win (it is partitioned) never
    increments its term, so it does not disrupt the cluster when it rejoins."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.tick(3, 100)
    assert cluster.node(3).term == 1 and cluster.node(3).role is Role.PRE_CANDIDATE
    cluster.heal()
    cluster.tick_all(5)
    assert cluster.leaders() == [1] and cluster.node(1).term == 1


def test_9_6_without_prevote_an_isolated_node_disrupts_the_leader_on_return() -> None:
    """§9.6 (motivation): without PreVote the rejoining server's higher term
    forces the leader to step down."""
    cluster = Cluster(3, pre_vote=False, check_quorum=False)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.tick(3, 100)
    assert cluster.node(3).term > 1
    cluster.heal()
    cluster.tick_all(30)
    assert cluster.node(1).term > 1


def test_9_6_a_prevote_is_granted_to_an_up_to_date_candidate_then_it_campaigns() -> None:
    """§9.6: a pre-candidate that wins the pre-vote starts a real election."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(1)
    for node_id in (2, 3):
        cluster.tick(node_id, 10)  # the leader's lease has expired everywhere
    start = len(cluster.delivered)
    cluster.tick(2, 10)
    cluster.deliver()
    assert cluster.node(2).role is Role.LEADER and cluster.node(2).term == 2
    types = [m.type for m in cluster.delivered[start:] if m.source == 2][:2]
    assert types == [MT.PRE_VOTE, MT.VOTE]


def test_4_2_3_a_server_that_hears_from_a_leader_ignores_vote_requests() -> None:
    """§4.2.3: if a server receives a RequestVote within the minimum election
    timeout of hearing from a current leader, it neither updates its term nor grants."""
    cluster = Cluster(3)
    cluster.elect(1)
    follower = cluster.node(2)
    follower.step(Message(MT.VOTE, 3, 2, 5, 1, 1))
    assert follower.term == 1 and cluster.take(lambda m: m.source == 2) == []


def test_3_10_a_transfer_forced_vote_request_bypasses_stickiness() -> None:
    """§3.10/§4.2.3: a RequestVote sent because of TimeoutNow is honoured even
    though the server heard from the leader recently."""
    cluster = Cluster(3)
    cluster.elect(1)
    follower = cluster.node(2)
    follower.step(Message(MT.VOTE, 3, 2, 2, 1, 1, context=TRANSFER_CONTEXT))
    assert follower.term == 2 and follower.vote == 3


def test_6_2_check_quorum_a_leader_cut_off_from_the_majority_steps_down() -> None:
    """§6.2: a leader that does not hear from a majority within an election
    timeout steps down (so clients can find the real leader)."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(1)
    cluster.tick(1, 2 * cluster.node(1).config.election_ticks)
    assert cluster.node(1).role is Role.FOLLOWER


def test_6_2_check_quorum_a_leader_with_a_majority_stays() -> None:
    """§6.2: a leader that hears from a majority (itself and one of two) stays."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.tick_all(50)
    assert cluster.node(1).role is Role.LEADER and cluster.node(1).term == 1


def test_3_10_leadership_transfer_to_a_caught_up_follower() -> None:
    """§3.10: the leader sends TimeoutNow to a caught-up target, which starts an
    election at once and wins it."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, b"a")
    cluster.deliver()
    cluster.node(1).transfer_leadership(3)
    cluster.deliver()
    assert cluster.leaders() == [3] and cluster.node(3).term == 2
    assert any(m.type is MT.TIMEOUT_NOW and m.target == 3 for m in cluster.delivered)


def test_3_10_the_leader_first_brings_the_target_up_to_date() -> None:
    """§3.10: if the target lags, the leader replicates to it before TimeoutNow."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, b"a", b"b")
    cluster.deliver()
    cluster.heal()
    cluster.node(1).transfer_leadership(3)
    cluster.deliver()
    assert cluster.leaders() == [3]
    assert cluster.user_data(3)[:2] == [b"a", b"b"]


def test_3_10_proposals_are_dropped_during_a_transfer_which_is_abandoned_after_a_timeout() -> None:
    """§3.10: the leader stops accepting requests while transferring, and aborts
    the transfer if it does not complete within an election timeout."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.node(1).transfer_leadership(3)
    with pytest.raises(ProposalDropped):
        cluster.propose(1, b"x")
    cluster.tick_all(cluster.node(1).config.election_ticks)
    assert cluster.node(1).role is Role.LEADER and cluster.node(1).transferee is None
    assert cluster.propose(1, b"x")


def test_6_4_read_index_is_confirmed_by_a_heartbeat_round() -> None:
    """§6.4: the leader records its commit index as the read index, then confirms
    it is still leader by exchanging heartbeats with a majority."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, b"a")
    cluster.deliver()
    cluster.node(1).read_index(b"r1")
    assert cluster.peers[1].read_states == []
    heartbeats = cluster.take(lambda m: m.type is MT.HEARTBEAT)
    cluster.deliver_one(heartbeats[0])
    cluster.deliver()
    assert cluster.peers[1].read_states == [ReadState(2, b"r1")]


def test_6_4_a_leader_without_a_majority_never_confirms_a_read() -> None:
    """§6.4: a deposed leader cannot confirm reads (no stale reads, no leases)."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(1)
    cluster.node(1).read_index(b"r1")
    cluster.tick_all(5)
    assert cluster.peers[1].read_states == []


def test_6_4_a_new_leader_serves_reads_only_after_committing_an_entry_of_its_term() -> None:
    """§6.4: a new leader's commit index may be stale until it commits its no-op."""
    cluster = Cluster(3)
    cluster.node(1).campaign()
    for _ in range(3):  # votes, then the no-op is sent but not acknowledged
        cluster.process_all()
        batch, cluster.queue = cluster.queue, []
        for message in batch:
            if message.type is not MT.APPEND_RESPONSE:
                cluster.deliver_one(message)
    leader = cluster.node(1)
    assert leader.role is Role.LEADER and leader.commit_index == 0
    leader.read_index(b"early")
    cluster.deliver()
    assert cluster.peers[1].read_states == [ReadState(1, b"early")]


def test_6_4_a_follower_read_is_forwarded_to_the_leader() -> None:
    """§6.4: followers can serve reads: they ask the leader for its read index."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, b"a")
    cluster.deliver()
    cluster.node(2).read_index(b"f")
    cluster.deliver()
    assert cluster.peers[2].read_states == [ReadState(2, b"f")]


def test_6_4_a_single_voter_confirms_reads_at_once() -> None:
    """§6.4: with one voter, the leader is its own majority."""
    cluster = Cluster(1)
    cluster.elect(1)
    cluster.node(1).read_index(b"solo")
    cluster.deliver()
    assert cluster.peers[1].read_states == [ReadState(1, b"solo")]


def test_compaction_a_lagging_follower_receives_a_snapshot_and_continues() -> None:
    """§5 (compaction chapter), InstallSnapshot: when the leader has discarded the
    entries a follower needs, it sends its snapshot; the follower installs it and
    replication continues from there."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, b"a", b"b", b"c")
    cluster.deliver()
    cluster.tick_all(1)
    for node_id in (1, 2):
        snapshot = cluster.node(node_id).compact(4, b"state")
        cluster.peers[node_id].log.purge(snapshot)
    cluster.heal()
    cluster.propose(1, b"d")
    cluster.tick_all(3)
    snapshots = [m for m in cluster.delivered if m.type is MT.SNAPSHOT]
    assert [(m.target, m.snapshot.index if m.snapshot else 0) for m in snapshots] == [(3, 4)]
    peer = cluster.peers[3]
    assert peer.log.snap.index == 4 and peer.log.snap.data == b"state"
    assert cluster.user_data(3) == [b"d"] and cluster.node(3).commit_index == 5
    assert cluster.node(1).progress[3].state is ProgressState.REPLICATE


def lagging_follower_needing_a_snapshot() -> Cluster:
    """Node 3 missed entries 2-4, which nodes 1 and 2 have compacted away."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, b"a", b"b", b"c")
    cluster.deliver()
    cluster.tick_all(1)
    for node_id in (1, 2):
        snapshot = cluster.node(node_id).compact(4, b"state")
        cluster.peers[node_id].log.purge(snapshot)
    cluster.heal()
    return cluster


def snapshots_sent(cluster: Cluster) -> int:
    return sum(1 for m in cluster.delivered + cluster.dropped if m.type is MT.SNAPSHOT)


def test_compaction_a_lost_snapshot_is_sent_again_after_an_election_timeout() -> None:
    """InstallSnapshot (simulator seed 13): the network may lose a SNAPSHOT. The
    follower's heartbeat responses show that its commit index is still below the
    snapshot, so the leader sends it again, but at most once per election timeout
    (a slow install must not cause a snapshot storm)."""
    cluster = lagging_follower_needing_a_snapshot()
    cluster.drop_if = lambda m: m.type is MT.SNAPSHOT and not cluster.dropped
    cluster.propose(1, b"d")
    cluster.tick_all(2)
    assert [m.type for m in cluster.dropped] == [MT.SNAPSHOT]
    election_ticks = cluster.node(1).config.election_ticks
    cluster.tick_all(election_ticks - 3)
    assert snapshots_sent(cluster) == 1  # still waiting: heartbeats alone resend nothing
    assert cluster.node(1).progress[3].state is ProgressState.SNAPSHOT
    cluster.tick_all(3)
    assert snapshots_sent(cluster) == 2
    assert cluster.user_data(3) == [b"d"] and cluster.node(3).commit_index == 5
    assert cluster.node(1).progress[3].state is ProgressState.REPLICATE


def test_compaction_a_lost_answer_to_a_snapshot_is_recovered_by_a_heartbeat() -> None:
    """InstallSnapshot (simulator seed 13): if the follower installs the snapshot
    but its answer is lost, its next heartbeat response carries a commit index that
    covers the snapshot: the leader probes from there instead of resending it."""
    cluster = lagging_follower_needing_a_snapshot()
    cluster.drop_if = lambda m: (
        m.type is MT.APPEND_RESPONSE and m.source == 3 and m.index == 4 and not m.reject
    )
    cluster.propose(1, b"d")
    cluster.tick_all(2)
    assert len(cluster.dropped) == 1 and cluster.peers[3].log.snap.index == 4
    cluster.tick_all(2)
    assert snapshots_sent(cluster) == 1
    assert cluster.user_data(3) == [b"d"] and cluster.node(3).commit_index == 5
    assert cluster.node(1).progress[3].state is ProgressState.REPLICATE


def test_compaction_is_refused_beyond_the_applied_index() -> None:
    """Compaction discards only what the state machine has applied."""
    cluster = Cluster(1)
    cluster.elect(1)
    with pytest.raises(ValueError):
        cluster.node(1).compact(5, b"")


def test_compaction_superseded_by_a_pending_snapshot_is_a_no_op() -> None:
    """A follower applies a PURGE (point 3) while the leader's snapshot (index 8)
    arrives: the snapshot supersedes the purge, and compaction must not fail
    (it once raised Compacted, and the node's Raft loop stopped for good)."""
    membership = Membership(frozenset({1, 2, 3}))
    log = MemoryLog(Snapshot(0, 0, membership), [Entry(i, 1, 0, b"") for i in range(1, 6)])
    node = RaftNode(default_config(2), log, HardState(1, 0, 5), random.Random(0), applied=5)
    snapshot = Snapshot(8, 1, membership, b"state")
    node.step(Message(MT.SNAPSHOT, 1, 2, 1, snapshot=snapshot))
    assert node.compact(3, b"purge") is None
    assert node.compact(5, b"purge") is None
    ready = node.ready()
    assert ready.snapshot == snapshot  # still installed with the next Ready
    log.install(snapshot)
    node.advance(ready)
    assert node.compact(8, b"again") is None  # at or below the installed snapshot
