"""Membership changes (dissertation chapter 4): single-server changes, one at a
time, in effect once appended; learners; promotion; demotion and removal, even
of the leader."""

from __future__ import annotations

import random

import pytest

from changeagent.raft import (
    ENTRY_TYPE_MEMBERSHIP,
    ConfChange,
    ConfChangeKind,
    Entry,
    HardState,
    Membership,
    MembershipChangeRejected,
    Message,
    MessageType,
    ProgressState,
    RaftNode,
    Role,
)

from .harness import Cluster, default_config, make_node

MT = MessageType
ADD, PROMOTE, REMOVE = ConfChangeKind.ADD_LEARNER, ConfChangeKind.PROMOTE, ConfChangeKind.REMOVE
DEMOTE = ConfChangeKind.DEMOTE


def grown_cluster() -> Cluster:
    """Three voters with a leader, plus an empty node 4 added as a learner (which
    receives the bootstrap snapshot, then the log)."""
    cluster = Cluster(3, bootstrap_index=1)
    cluster.elect(1)
    cluster.add_node(4)
    cluster.change(1, ADD, 4)
    cluster.deliver()
    return cluster


def test_conf_change_round_trips_and_rejects_garbage() -> None:
    change = ConfChange(ADD, 7, b"http://10.0.0.7:8080")
    assert ConfChange.decode(change.encode()) == change
    for garbage in (b"", b"\x01\x01", b"\x09" + change.encode()[1:], b"\x01\x01" + bytes(8)):
        with pytest.raises(ValueError):
            ConfChange.decode(garbage)


def test_4_1_a_change_takes_effect_on_the_leader_as_soon_as_it_is_appended() -> None:
    """§4.1: a server always uses the latest configuration in its log, committed or not."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(2)
    cluster.isolate(3)
    cluster.change(1, ADD, 4)
    assert cluster.node(1).membership.learners == {4}
    assert cluster.node(1).commit_index == 1  # not committed, yet in force


def test_4_1_a_change_takes_effect_on_followers_when_appended() -> None:
    """§4.1: followers switch when the entry is appended to their log."""
    cluster = grown_cluster()
    for node_id in (1, 2, 3, 4):
        assert cluster.node(node_id).membership == Membership(frozenset({1, 2, 3}), frozenset({4}))


def test_4_1_a_truncated_change_is_undone() -> None:
    """§4.1: if a configuration entry is removed by a conflicting leader, the
    server falls back to the previous configuration in its log."""
    cluster = Cluster(5)
    cluster.elect(1)
    for other in (3, 4, 5):
        cluster.cut |= {(1, other), (other, 1)}
    cluster.change(1, ADD, 6)
    cluster.deliver()  # only node 2 has the change
    assert cluster.node(2).membership.learners == {6}
    cluster.isolate(1)
    cluster.isolate(2)
    for node_id in (3, 4, 5):
        cluster.tick(node_id, 10)  # the old leader's lease expires
    cluster.elect(3)
    assert cluster.node(3).role is Role.LEADER
    cluster.heal()
    cluster.isolate(1)
    cluster.propose(3, b"new")
    cluster.tick_all(2)  # a heartbeat round resumes the probe of node 2
    assert cluster.node(2).membership.learners == frozenset()
    assert cluster.node(2).last_index == cluster.node(3).last_index


def test_4_1_only_one_change_may_be_pending_at_a_time() -> None:
    """§4.1: the leader does not start a new change until the previous one commits."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(2)
    cluster.isolate(3)
    cluster.change(1, ADD, 4)
    with pytest.raises(MembershipChangeRejected):
        cluster.change(1, ADD, 5)


def test_4_1_a_new_leader_must_commit_an_entry_of_its_term_before_a_change() -> None:
    """§4.1 (the single-server bug, raft-dev 2015): a leader may not append a
    change until it has committed an entry of its current term."""
    node = RaftNode(
        default_config(1),
        Cluster(3).peers[1].log,
        HardState(),
        random.Random(0),
    )
    node.campaign()
    node.advance(node.ready())  # its own vote is durable
    node.step(Message(MT.VOTE_RESPONSE, 2, 1, 1))
    assert node.role is Role.LEADER
    with pytest.raises(MembershipChangeRejected):
        node.propose_membership(ConfChange(ADD, 4))


def test_4_2_1_a_learner_receives_the_log_but_neither_votes_nor_counts() -> None:
    """§4.2.1: new servers join as non-voting members until they have caught up."""
    cluster = grown_cluster()
    cluster.propose(1, b"a")
    cluster.tick_all(1)
    assert cluster.user_data(4) == [b"a"]
    cluster.tick(4, 100)
    assert cluster.node(4).role is Role.FOLLOWER and cluster.node(4).term == 2
    # With two voters gone, the learner's copy does not make a majority.
    cluster.isolate(2)
    cluster.isolate(3)
    commit = cluster.node(1).commit_index
    cluster.propose(1, b"b")
    cluster.deliver()
    assert cluster.node(1).commit_index == commit


def test_4_2_1_a_learner_that_is_not_caught_up_cannot_be_promoted() -> None:
    """§4.2.1: promotion waits for the learner to catch up."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.change(1, ADD, 4)  # node 4 does not exist: it never answers
    cluster.deliver()
    with pytest.raises(MembershipChangeRejected):
        cluster.change(1, PROMOTE, 4)


def test_4_2_1_a_promoted_learner_votes_and_counts() -> None:
    """§4.1: once promoted, the member counts toward majorities."""
    cluster = grown_cluster()
    cluster.change(1, PROMOTE, 4)
    cluster.deliver()
    assert cluster.node(1).membership.voters == {1, 2, 3, 4}
    cluster.isolate(3)
    cluster.isolate(2)
    commit = cluster.node(1).commit_index
    cluster.propose(1, b"a")
    cluster.deliver()
    assert cluster.node(1).commit_index == commit  # 2 of 4 is not a majority
    cluster.heal()
    cluster.isolate(3)
    cluster.tick_all(2)
    assert cluster.node(1).commit_index == commit + 1  # 1, 2, 4 of 4


def test_4_1_removing_a_follower_shrinks_the_majority() -> None:
    """§4.1: a removed server no longer counts; the majority is of the new set."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.change(1, REMOVE, 3)
    cluster.deliver()
    cluster.isolate(2)
    cluster.propose(1, b"a")
    cluster.deliver()
    assert cluster.node(1).commit_index == 2  # still needs node 2 (2 voters)
    cluster.heal()
    cluster.change(1, REMOVE, 2)
    cluster.deliver()
    cluster.isolate(2)
    cluster.propose(1, b"b")
    cluster.deliver()
    assert cluster.user_data(1)[-1] == b"b"  # a lone voter commits alone


def test_4_2_2_a_removed_leader_steps_down_once_the_removal_commits() -> None:
    """§4.2.2: the leader may be removed; it manages the cluster until the change
    commits, then steps down (and here hands over with TimeoutNow)."""
    cluster = Cluster(3)
    cluster.elect(1)
    index = cluster.change(1, REMOVE, 1)
    assert cluster.node(1).role is Role.LEADER
    cluster.deliver()
    assert cluster.node(1).role is Role.FOLLOWER
    assert len(cluster.leaders()) == 1 and cluster.leaders()[0] in (2, 3)
    new_leader = cluster.leaders()[0]
    assert cluster.node(new_leader).commit_index >= index
    cluster.propose(new_leader, b"after")
    cluster.tick_all(3)
    assert cluster.user_data(new_leader) == [b"after"]


def test_4_2_2_a_removed_node_stops_campaigning_and_keeps_its_log() -> None:
    """§4.2.3: removed servers must not disrupt the cluster; here they never
    campaign, and their log stays intact for the node layer to keep serving it."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, b"a")
    cluster.deliver()
    cluster.change(1, REMOVE, 3)
    cluster.tick_all(2)
    cluster.isolate(3)
    cluster.tick(3, 100)
    removed = cluster.node(3)
    assert removed.role is Role.FOLLOWER and removed.term == 1
    assert 3 not in removed.membership.voters and cluster.user_data(3) == [b"a"]


def test_4_2_2_a_removed_leader_whose_removal_reached_no_one_can_still_lead() -> None:
    """§4.2.2 (simulator seed 772): a leader appends its own removal, which reaches
    no one else, and loses its quorum (§6.2 CheckQuorum steps it down). Its log is
    now the longest, so the others cannot win without it; it must still campaign
    while the removal is not known to be committed. It wins with a majority of its
    latest configuration (not counting itself), commits the removal and hands over."""
    cluster = Cluster(2)
    cluster.elect(1)
    cluster.isolate(1)
    index = cluster.change(1, REMOVE, 1)
    cluster.tick_all(2 * 10)
    removed = cluster.node(1)
    assert removed.role is not Role.LEADER and removed.membership.voters == {2}
    assert removed.commit_index < index
    cluster.heal()
    cluster.tick_all(6 * 10)
    assert cluster.leaders() == [2]
    assert cluster.node(2).membership.voters == {2} and cluster.node(2).commit_index >= index
    assert removed.role is Role.FOLLOWER and removed.commit_index >= index
    cluster.propose(2, b"after")
    cluster.tick_all(3)
    assert cluster.user_data(2)[-1] == b"after"


def test_4_2_2_a_node_removed_by_a_committed_change_never_campaigns() -> None:
    """§4.2.3: once a removed server knows its removal is committed, it is not
    needed any more and never campaigns, even if it hears from no leader."""
    node, _ = make_node(node_id=3, voters=(1, 2, 3))
    removal = Entry(1, 1, ENTRY_TYPE_MEMBERSHIP, ConfChange(REMOVE, 3).encode())
    node.step(Message(MT.APPEND, 1, 3, 1, 0, 0, (removal,), commit=0))
    assert node.membership.voters == {1, 2}
    for _ in range(30):
        node.tick()
    assert node.role is Role.PRE_CANDIDATE  # removal not known committed: it may be needed
    node.step(Message(MT.HEARTBEAT, 1, 3, 2, commit=1))
    for _ in range(100):
        node.tick()
    assert node.role is Role.FOLLOWER and node.term == 2  # type: ignore[comparison-overlap]


def test_4_1_membership_is_recovered_from_the_log_after_a_restart() -> None:
    """§4.1: configuration entries are ordinary log entries; a restarted server
    recovers the latest configuration from its snapshot and log."""
    cluster = grown_cluster()
    cluster.change(1, PROMOTE, 4)
    cluster.deliver()
    cluster.restart(2)
    assert cluster.node(2).membership.voters == {1, 2, 3, 4}


def test_the_leader_tracks_progress_of_new_members_and_forgets_removed_ones() -> None:
    cluster = grown_cluster()
    assert set(cluster.node(1).progress) == {2, 3, 4}
    assert cluster.node(1).progress[4].learner
    assert cluster.node(1).progress[4].state is ProgressState.REPLICATE
    cluster.change(1, REMOVE, 4)
    assert set(cluster.node(1).progress) == {2, 3, 4}  # 4 must learn of its removal
    cluster.deliver()
    assert set(cluster.node(1).progress) == {2, 3, 4}  # ... and that it is committed
    cluster.tick_all(1)  # a heartbeat response shows that it knows
    assert set(cluster.node(1).progress) == {2, 3}
    assert cluster.node(4).commit_index >= cluster.node(1).commit_index
    assert cluster.node(4).membership.learners == frozenset()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (ConfChange(ADD, 2), "already a member"),
        (ConfChange(PROMOTE, 2), "not a learner"),
        (ConfChange(REMOVE, 9), "not a member"),
        (ConfChange(DEMOTE, 9), "not a voter"),
    ],
)
def test_invalid_changes_are_rejected(change: ConfChange, reason: str) -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    with pytest.raises(MembershipChangeRejected, match=reason):
        cluster.node(1).propose_membership(change)


def test_the_last_voter_cannot_be_removed() -> None:
    cluster = Cluster(1)
    cluster.elect(1)
    with pytest.raises(MembershipChangeRejected, match="last voter"):
        cluster.change(1, REMOVE, 1)


def test_the_last_voter_cannot_be_demoted() -> None:
    cluster = Cluster(1, learners=(2,))
    cluster.elect(1)
    with pytest.raises(MembershipChangeRejected, match="last voter") as refused:
        cluster.change(1, DEMOTE, 1)
    assert not refused.value.busy  # it can never apply as the membership stands


def test_a_demotion_round_trips_and_only_applies_to_a_voter() -> None:
    change = ConfChange(DEMOTE, 3)
    assert ConfChange.decode(change.encode()) == change
    membership = Membership(frozenset({1, 2, 3}), frozenset({4}))
    assert change.apply(membership) == Membership(frozenset({1, 2}), frozenset({3, 4}))
    assert ConfChange(DEMOTE, 4).check(membership) == "node 4 is not a voter"


def test_4_1_a_demoted_follower_still_receives_the_log_but_no_longer_counts() -> None:
    """A demotion is a removal from the voters (so a single-server change, §4.1):
    the majority is of the remaining voters, and the demoted server goes on
    receiving every entry as a learner."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.change(1, DEMOTE, 3)
    cluster.deliver()
    for node_id in (1, 2, 3):
        assert cluster.node(node_id).membership == Membership(frozenset({1, 2}), frozenset({3}))
    assert cluster.node(1).progress[3].learner
    cluster.propose(1, b"a")
    cluster.deliver()
    assert cluster.user_data(3) == [b"a"]
    # Node 3's copy makes no majority with node 1 any more: 2 of {1, 2} is needed.
    cluster.isolate(2)
    commit = cluster.node(1).commit_index
    cluster.propose(1, b"b")
    cluster.deliver()
    assert cluster.node(1).commit_index == commit
    assert cluster.node(3).last_index == cluster.node(1).last_index  # it has it, all the same
    cluster.heal()
    cluster.tick_all(2)
    assert cluster.user_data(3) == [b"a", b"b"]


def test_4_2_2_a_demoted_learner_never_campaigns_once_it_knows_the_demotion_committed() -> None:
    """Like a removed server (§4.2.3), a demoted one that knows the change
    committed is not needed for elections and never campaigns; before that it
    may (its log may be the only one holding the change)."""
    node, _ = make_node(node_id=3, voters=(1, 2, 3))
    demotion = Entry(1, 1, ENTRY_TYPE_MEMBERSHIP, ConfChange(DEMOTE, 3).encode())
    node.step(Message(MT.APPEND, 1, 3, 1, 0, 0, (demotion,), commit=0))
    assert node.membership == Membership(frozenset({1, 2}), frozenset({3}))
    for _ in range(30):
        node.tick()
    assert node.role is Role.PRE_CANDIDATE  # not known committed: it may be needed
    node.step(Message(MT.HEARTBEAT, 1, 3, 2, commit=1))
    for _ in range(100):
        node.tick()
    assert node.role is Role.FOLLOWER and node.term == 2  # type: ignore[comparison-overlap]


def test_4_2_2_a_demoted_leader_steps_down_hands_over_and_stays_a_learner() -> None:
    """The leader may demote itself: it manages the cluster until the change
    commits, then steps down, hands over with TimeoutNow and follows as a learner."""
    cluster = Cluster(3)
    cluster.elect(1)
    index = cluster.change(1, DEMOTE, 1)
    assert cluster.node(1).role is Role.LEADER
    cluster.deliver()
    assert cluster.node(1).role is Role.FOLLOWER
    assert len(cluster.leaders()) == 1 and cluster.leaders()[0] in (2, 3)
    new_leader = cluster.leaders()[0]
    assert cluster.node(new_leader).commit_index >= index
    assert cluster.node(new_leader).membership == Membership(frozenset({2, 3}), frozenset({1}))
    cluster.propose(new_leader, b"after")
    cluster.tick_all(3)
    assert cluster.user_data(1) == [b"after"]  # still replicated to as a learner
    cluster.tick(1, 100)
    assert cluster.node(1).role is Role.FOLLOWER  # and never campaigns


def test_a_demoted_learner_can_be_promoted_again() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.change(1, DEMOTE, 3)
    cluster.deliver()
    cluster.change(1, PROMOTE, 3)
    cluster.deliver()
    assert cluster.node(3).membership.voters == {1, 2, 3}
    assert not cluster.node(1).progress[3].learner


def test_a_demotion_that_would_leave_no_reachable_quorum_is_refused() -> None:
    """Demotions take effect on append: demoting node 2 while node 3 is silent
    would leave voters {1, 3} with only node 1 reachable, so nothing (not even
    the demotion) could commit until node 3 came back. The leader refuses it as
    busy (it may succeed later); demoting the silent node itself is fine."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.tick_all(2 * 10)  # two check-quorum sweeps without a word from node 3
    assert cluster.node(1).role is Role.LEADER
    with pytest.raises(MembershipChangeRejected, match="no quorum") as refused:
        cluster.change(1, DEMOTE, 2)
    assert refused.value.busy
    assert cluster.node(1).membership.voters == {1, 2, 3}
    index = cluster.change(1, DEMOTE, 3)
    cluster.deliver()
    assert cluster.node(1).commit_index >= index
    assert cluster.node(1).membership == Membership(frozenset({1, 2}), frozenset({3}))


def test_a_peer_heard_from_before_the_last_sweep_still_counts_as_reachable() -> None:
    """Right after a check-quorum sweep clears `recent_active`, a live peer has
    not answered yet; the previous sweep's answer keeps it reachable."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.tick_all(10, deliver=False)  # the sweep happens with nothing delivered since
    cluster.queue.clear()
    assert not any(progress.recent_active for progress in cluster.node(1).progress.values())
    cluster.change(1, DEMOTE, 3)  # not refused
    assert cluster.node(1).membership.voters == {1, 2}
