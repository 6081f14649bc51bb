"""One test per rule of the Raft paper about log replication and commitment
(§5.3, §5.4.2, §8 no-op, §10.2.1 pipelining; Ongaro's dissertation numbering)."""

from __future__ import annotations

from dataclasses import replace

from changeagent.raft import (
    ENTRY_TYPE_NOOP,
    Entry,
    HardState,
    Message,
    MessageType,
    NotLeader,
    ProgressState,
    RaftNode,
    Role,
    replication,
)
from changeagent.raft.messages import COMMIT_ONLY_CONTEXT as COMMIT_ONLY

from .harness import Cluster, drain, make_node

MT = MessageType


def state_of(node: RaftNode, peer: int) -> ProgressState:
    return node.progress[peer].state


def append(
    term: int, log_term: int, index: int, entries: list[tuple[int, int]], commit: int = 0
) -> Message:
    batch = tuple(Entry(i, t, 0, b"") for i, t in entries)
    return Message(MT.APPEND, 2, 1, term, log_term, index, batch, commit)


def test_8_a_new_leader_appends_a_no_op_entry_of_its_term() -> None:
    """§8 (client interaction) / §6.4: each leader commits a blank no-op entry at
    the start of its term, which tells it what is committed."""
    cluster = Cluster(3)
    cluster.elect(1)
    assert [(e.index, e.term, e.type) for e in cluster.peers[2].applied] == [
        (1, 1, ENTRY_TYPE_NOOP)
    ]


def test_5_3_the_leader_appends_a_proposal_and_replicates_it() -> None:
    """§5.3: the leader appends the command to its log, issues AppendEntries in
    parallel, and applies it once it is committed."""
    cluster = Cluster(3)
    cluster.elect(1)
    assert cluster.propose(1, b"a", b"b") == range(2, 4)
    cluster.deliver()
    cluster.tick_all(1)  # the heartbeat carries the commit index to everyone
    for node_id in (1, 2, 3):
        assert cluster.user_data(node_id) == [b"a", b"b"]


def test_5_3_a_follower_refuses_to_accept_a_proposal() -> None:
    """§5.3/§8: only the leader accepts client requests; others point to it."""
    cluster = Cluster(3)
    cluster.elect(1)
    try:
        cluster.propose(2, b"x")
    except NotLeader as error:
        assert error.leader_hint == 1
    else:
        raise AssertionError("a follower accepted a proposal")


def test_5_3_a_follower_rejects_entries_whose_previous_entry_does_not_match() -> None:
    """§5.3: if the follower does not find an entry with the same index and term
    as prevLogIndex/prevLogTerm, it refuses the new entries."""
    node, log = make_node(entries=[(1, 1), (2, 1)], hard_state=HardState(term=2))
    node.step(append(2, log_term=2, index=2, entries=[(3, 2)]))
    [response] = drain(node, log)
    assert response.reject and response.index == 2 and node.last_index == 2


def test_5_3_a_rejection_carries_a_hint_for_fast_backoff() -> None:
    """§5.3 (optimization): the follower reports the last index whose term is not
    newer than the leader's prevLogTerm, so the leader skips a whole term at once."""
    node, log = make_node(entries=[(1, 1), (2, 3), (3, 3), (4, 3)], hard_state=HardState(term=4))
    node.step(append(4, log_term=2, index=6, entries=[]))
    [response] = drain(node, log)
    assert response.reject and (response.reject_hint, response.log_term) == (1, 1)


def test_5_3_a_follower_deletes_conflicting_entries_and_appends_new_ones() -> None:
    """§5.3: if an existing entry conflicts with a new one (same index, different
    term), delete it and all that follow it, then append the new entries."""
    node, _log = make_node(entries=[(1, 1), (2, 2), (3, 2)], hard_state=HardState(term=3))
    node.step(append(3, log_term=1, index=1, entries=[(2, 3)]))
    ready = node.ready()
    assert [(e.index, e.term) for e in ready.entries] == [(2, 3)]
    assert node.last_index == 2
    node.advance(ready)


def test_5_3_appending_entries_already_present_changes_nothing() -> None:
    """§5.3: a retransmitted AppendEntries must not truncate matching entries."""
    node, _log = make_node(entries=[(1, 1), (2, 1), (3, 1)], hard_state=HardState(term=1))
    node.step(append(1, log_term=1, index=1, entries=[(2, 1)]))
    ready = node.ready()
    assert ready.entries == () and node.last_index == 3
    assert [m.index for m in ready.messages_after_persist] == [2]


def test_5_3_the_follower_commits_up_to_the_last_new_entry() -> None:
    """§5.3: if leaderCommit > commitIndex, set commitIndex = min(leaderCommit,
    index of the last new entry)."""
    node, _log = make_node(entries=[(1, 1)], hard_state=HardState(term=1))
    node.step(append(1, log_term=1, index=1, entries=[(2, 1)], commit=5))
    assert node.commit_index == 2
    ready = node.ready()
    assert [e.index for e in ready.committed_entries] == [1, 2]
    assert ready.hard_state is not None and ready.hard_state.commit == 2


def test_5_3_an_entry_is_committed_once_a_majority_stores_it() -> None:
    """§5.3: a log entry is committed once the leader has replicated it on a majority."""
    cluster = Cluster(5)
    cluster.elect(1)
    for follower in (4, 5):
        cluster.isolate(follower)
    cluster.propose(1, b"x")
    cluster.deliver()
    assert cluster.node(1).commit_index == 2  # nodes 1, 2, 3 of 5
    cluster.isolate(3)
    cluster.propose(1, b"y")
    cluster.deliver()
    assert cluster.node(1).commit_index == 2  # only 1 and 2 of 5 store entry 3


def test_5_3_committed_entries_are_applied_in_log_order_exactly_once() -> None:
    """§5.3: once committed, entries are applied in log order (no gaps, no repeats)."""
    cluster = Cluster(3)
    cluster.elect(1)
    for round_number in range(5):
        cluster.propose(1, *[b"%d-%d" % (round_number, i) for i in range(7)])
        cluster.deliver()
    cluster.tick_all(1)
    for peer in cluster.peers.values():
        assert [e.index for e in peer.applied] == list(range(1, 37))


def test_5_4_2_entries_of_older_terms_are_not_committed_by_counting_replicas() -> None:
    """§5.4.2 (Figure 8): a leader never commits an entry from a previous term by
    counting replicas; it commits it indirectly with an entry of its own term."""
    node, log = make_node(entries=[(1, 1), (2, 2)], hard_state=HardState(term=2), pre_vote=False)
    node.campaign()
    drain(node, log)  # its own vote is durable
    node.step(Message(MT.VOTE_RESPONSE, 2, 1, 3))
    assert node.role is Role.LEADER and node.term == 3
    drain(node, log)  # the no-op (index 3, term 3) is now durable on the leader
    # A follower acknowledges entry 2 (term 2) but not yet the no-op.
    node.step(Message(MT.APPEND_RESPONSE, 2, 1, 3, index=2))
    assert node.commit_index == 0
    node.step(Message(MT.APPEND_RESPONSE, 2, 1, 3, index=3))
    assert node.commit_index == 3


def test_10_2_1_the_leader_counts_itself_only_once_its_entries_are_durable() -> None:
    """§10.2.1: the leader may write to its disk in parallel with replicating, but
    an entry counts toward its own majority only once it is durable there."""
    node, log = make_node(voters=(1, 2, 3), pre_vote=False)
    node.campaign()
    drain(node, log)  # its own vote is durable
    node.step(Message(MT.VOTE_RESPONSE, 2, 1, 1))
    ready = node.ready()
    assert [e.type for e in ready.entries] == [ENTRY_TYPE_NOOP]
    # The no-op is sent right away, before the leader has persisted it.
    assert {m.type for m in ready.messages} == {MT.APPEND}
    node.step(Message(MT.APPEND_RESPONSE, 2, 1, 1, index=1))
    assert node.commit_index == 0  # follower 2 + leader's undurable copy: not yet
    log.append(ready.entries)
    node.advance(ready)
    assert node.commit_index == 1


def test_5_3_the_leader_brings_a_divergent_follower_in_line() -> None:
    """§5.3: the leader decrements nextIndex after rejections until the logs
    match, then the follower's conflicting entries are overwritten."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(1)
    cluster.propose(1, b"lost-1", b"lost-2", b"lost-3")  # never leaves node 1
    cluster.process_all()
    cluster.heal()
    cluster.queue.clear()
    cluster.isolate(1)
    cluster.tick(3, 10)  # node 3 stops honouring the old leader's lease
    cluster.elect(2)
    cluster.propose(2, b"kept")
    cluster.deliver()
    cluster.heal()
    cluster.tick_all(3)
    assert cluster.user_data(1) == cluster.user_data(2) == [b"kept"]
    assert cluster.node(1).role is Role.FOLLOWER


def test_replication_batches_are_bounded_in_entries_and_bytes() -> None:
    """Batching: one APPEND carries at most max_message_entries entries and about
    max_message_bytes of data (at least one entry)."""
    cluster = Cluster(2, max_message_entries=4, max_message_bytes=100)
    cluster.elect(1)
    cluster.propose(1, *[b"e" * 10 for _ in range(10)])
    cluster.propose(1, *[b"f" * 60 for _ in range(3)])
    cluster.deliver()
    appends = [m for m in cluster.delivered if m.type is MT.APPEND and m.entries]
    assert max(len(m.entries) for m in appends) <= 4
    assert max(sum(len(e.data) for e in m.entries) for m in appends) <= 100
    assert cluster.user_data(1) == [b"e" * 10] * 10 + [b"f" * 60] * 3


def test_replication_pipelines_up_to_the_in_flight_window() -> None:
    """§10.2.1 pipelining: in the replicate state the leader keeps up to
    max_inflight_messages APPENDs outstanding, and no more."""
    cluster = Cluster(2, max_message_entries=1, max_inflight_messages=3)
    cluster.elect(1)
    assert cluster.node(1).progress[2].state is ProgressState.REPLICATE
    cluster.propose(1, *[b"%d" % i for i in range(10)])
    sent = cluster.take(lambda m: m.type is MT.APPEND)
    assert len(sent) == 3 and cluster.node(1).progress[2].inflight_messages == 3
    for message in sent:
        cluster.deliver_one(message)
    cluster.deliver()
    assert cluster.node(1).commit_index == 11


def test_replication_probes_one_message_at_a_time_until_the_follower_matches() -> None:
    """Probe state: before the follower's position is known, one APPEND at a time;
    a rejection moves nextIndex back and sends the next probe."""
    node, log = make_node(entries=[(1, 1), (2, 1)], hard_state=HardState(term=1), pre_vote=False)
    node.campaign()
    node.step(Message(MT.VOTE_RESPONSE, 2, 1, 2))
    first = [m for m in drain(node, log) if m.type is MT.APPEND and m.target == 2]
    assert [(m.index, len(m.entries)) for m in first] == [(2, 1)]
    assert state_of(node, 2) is ProgressState.PROBE
    node.propose([(0, b"x", "")])
    assert [m for m in drain(node, log) if m.target == 2] == []  # paused while probing
    node.step(Message(MT.APPEND_RESPONSE, 2, 1, 2, index=2, reject=True, reject_hint=1, log_term=1))
    [probe] = [m for m in drain(node, log) if m.target == 2]
    assert (probe.index, probe.log_term, len(probe.entries)) == (1, 1, 3)
    node.step(Message(MT.APPEND_RESPONSE, 2, 1, 2, index=4))
    assert state_of(node, 2) is ProgressState.REPLICATE and node.commit_index == 4


def test_a_commit_only_append_is_not_answered_unless_rejected() -> None:
    """A commit notice to a follower in the replicate state carries nothing the
    leader needs back: accepted, it only moves the commit index; refused (the
    follower lacks the previous entry), it is answered so the leader backs off.
    An empty APPEND without the mark (a probe) is answered as always."""
    node, log = make_node(entries=[(1, 1), (2, 1)], hard_state=HardState(term=1))
    notice = replace(append(1, log_term=1, index=2, entries=[], commit=2), context=COMMIT_ONLY)
    node.step(notice)
    assert drain(node, log) == [] and node.commit_index == 2
    node.step(replace(notice, index=5, log_term=1))  # we lack entry 5
    [refusal] = drain(node, log)
    assert refusal.reject and refusal.index == 5
    node.step(append(1, log_term=1, index=2, entries=[], commit=2))
    [answer] = drain(node, log)
    assert not answer.reject and answer.index == 2


def test_the_leader_marks_commit_notices_only_to_followers_it_replicates_to() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, b"a")
    cluster.deliver()
    notices = [m for m in cluster.delivered if m.type is MT.APPEND and not m.entries]
    assert notices and all(m.context == COMMIT_ONLY for m in notices[-2:])
    assert not [m for m in cluster.delivered[-2:] if m.type is MT.APPEND_RESPONSE]
    # A follower the leader probes (here: as after a rejection) gets an empty
    # APPEND it must answer; the one it replicates to, the marked notice.
    leader = cluster.node(1)
    leader._progress[2].become_probe()
    replication.broadcast_append(leader)
    [probe] = cluster.take(lambda m: m.type is MT.APPEND and m.target == 2)
    [notice] = cluster.take(lambda m: m.type is MT.APPEND and m.target == 3)
    assert not probe.entries and probe.context != COMMIT_ONLY
    assert not notice.entries and notice.context == COMMIT_ONLY
    cluster.deliver_one(probe)
    cluster.deliver_one(notice)
    answers = cluster.take(lambda m: m.type is MT.APPEND_RESPONSE)
    assert [m.source for m in answers] == [2]  # only the probe is answered


def test_a_lost_answer_is_found_through_the_heartbeats_not_the_commit_notices() -> None:
    """Regression (simulator seed 101): the answers to an APPEND are lost, the
    leader's notices go unanswered, so it learns the follower's index from the
    empty APPEND a heartbeat's answer makes it send, which is not marked."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.drop_if = lambda m: m.type is MT.APPEND_RESPONSE and m.source == 2
    index = cluster.propose(1, b"a")[-1]
    cluster.deliver()
    cluster.drop_if = None
    leader = cluster.node(1)
    assert leader.progress[2].match < index  # the leader does not know
    cluster.tick_all(1)  # heartbeat, its answer, the empty APPEND, its answer
    assert leader.progress[2].match == index
