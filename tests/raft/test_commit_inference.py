"""A follower that holds a write durably, told that its leader does too, commits it
itself when the two of them are a quorum (`follower.infer_commit`): the rule of
§5.4.2 (an entry of the current term stored on a quorum is committed), counted
by the follower for the one pair it knows about. Each test checks one condition
of the rule, with the notice (`RaftNode.notify_durable`) that feeds it."""

from __future__ import annotations

from changeagent.raft import (
    ENTRY_TYPE_NOOP,
    ConfChangeKind,
    Entry,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
)

from .harness import Cluster, drain, make_node

MT = MessageType


def durable_to(cluster: Cluster, target: int) -> list[Message]:
    return cluster.take(lambda m: m.type is MT.DURABLE and m.target == target)


def settled(voters: int = 3, learners: tuple[int, ...] = ()) -> Cluster:
    """Node 1 leads and every node has applied its no-op."""
    cluster = Cluster(voters, learners=learners)
    cluster.elect(1)
    cluster.tick_all(1)
    return cluster


def replicate_without_acks(cluster: Cluster, asker: int) -> int:
    """Propose one write at the leader, notice for `asker`; deliver the APPENDs and
    let the followers persist them, but hold back their acknowledgements (so the
    leader cannot count them) and the DURABLE notice. Returns the write's index."""
    (index,) = cluster.propose(1, b"w")
    cluster.node(1).notify_durable(asker)
    cluster.process(1)
    for message in cluster.take(lambda m: m.type is MT.APPEND):
        cluster.deliver_one(message)
    cluster.process_all()
    cluster.take(lambda m: m.type is MT.APPEND_RESPONSE)
    return index


def test_the_leader_sends_its_notice_after_persisting_with_its_last_index() -> None:
    cluster = settled()
    leader = cluster.node(1)
    (index,) = cluster.propose(1, b"w")
    assert leader.notify_durable(2)
    assert leader.notify_durable(2)  # one notice per peer and Ready
    assert not leader.notify_durable(9)  # not a member
    ready = leader.ready()
    assert not [m for m in ready.messages if m.type is MT.DURABLE]
    notices = [m for m in ready.messages_after_persist if m.type is MT.DURABLE]
    assert [(m.target, m.index, m.term) for m in notices] == [(2, index, leader.term)]


def test_a_voter_of_three_commits_once_it_and_the_leader_are_durable() -> None:
    cluster = settled()
    index = replicate_without_acks(cluster, asker=2)
    assert cluster.node(1).commit_index < index  # the leader has counted no one yet
    assert cluster.node(2).commit_index < index
    for notice in durable_to(cluster, 2):
        cluster.deliver_one(notice)
    cluster.process(2)
    assert cluster.node(2).commit_index == index
    assert cluster.user_data(2) == [b"w"]
    assert cluster.node(3).commit_index < index  # no notice, no inference


def test_the_notice_may_come_before_the_follower_is_durable() -> None:
    cluster = settled()
    (index,) = cluster.propose(1, b"w")
    cluster.node(1).notify_durable(2)
    cluster.process(1)
    appends = cluster.take(lambda m: m.type is MT.APPEND and m.target == 2)
    notices = durable_to(cluster, 2)
    follower = cluster.node(2)
    for message in appends + notices:  # both stepped before the follower persists
        follower.step(message)
    assert follower.commit_index < index  # not durable here yet
    cluster.process(2)  # persisted: it commits in `advance`, applies in the next Ready
    assert follower.commit_index == index
    assert cluster.user_data(2) == [b"w"]


def test_no_inference_among_five_voters() -> None:
    cluster = settled(voters=5)
    index = replicate_without_acks(cluster, asker=2)
    for notice in durable_to(cluster, 2):
        cluster.deliver_one(notice)
    cluster.process(2)
    assert cluster.node(2).commit_index < index
    assert not cluster.node(1).commit_inferable_by(2)


def test_a_learner_never_infers() -> None:
    cluster = settled(learners=(4,))
    index = replicate_without_acks(cluster, asker=4)
    for notice in durable_to(cluster, 4):
        cluster.deliver_one(notice)
    cluster.process(4)
    assert cluster.node(4).commit_index < index
    assert not cluster.node(1).commit_inferable_by(4)
    assert cluster.node(1).commit_inferable_by(2)


def test_only_an_entry_of_the_current_term_commits_by_inference() -> None:
    """Figure 8: an older term's entry held by the leader and this follower is not
    committed by that alone; the new leader's own entry commits it, with it."""
    node, log = make_node(entries=[(1, 1), (2, 1)], hard_state=HardState(term=2))
    node.step(Message(MT.APPEND, 2, 1, 2, log_term=1, index=2))  # leader 2 of term 2
    drain(node, log)
    node.step(Message(MT.DURABLE, 2, 1, 2, index=2))
    drain(node, log)
    assert node.commit_index == 0  # entry 2 is term 1's
    no_op = (Entry(3, 2, ENTRY_TYPE_NOOP, b""),)
    node.step(Message(MT.APPEND, 2, 1, 2, log_term=1, index=2, entries=no_op))
    drain(node, log)
    assert node.commit_index == 0  # the leader vouched only for entry 2
    node.step(Message(MT.DURABLE, 2, 1, 2, index=3))
    drain(node, log)
    assert node.commit_index == 3  # its term's no-op, and entry 2 with it


def test_no_inference_past_a_membership_entry_beyond_the_index() -> None:
    cluster = settled()
    (index,) = cluster.propose(1, b"w")
    cluster.process(1)
    change = cluster.change(1, ConfChangeKind.ADD_LEARNER, 4)
    assert change == index + 1
    cluster.process(1)
    follower = cluster.node(2)
    for message in cluster.take(lambda m: m.type is MT.APPEND and m.target == 2):
        follower.step(message)
    cluster.process(2)
    # The follower holds both; the leader vouches only for the write so far.
    follower.step(Message(MT.DURABLE, 1, 2, follower.term, index=index))
    cluster.process(2)
    assert follower.commit_index < index  # the membership entry lies beyond it
    follower.step(Message(MT.DURABLE, 1, 2, follower.term, index=change))
    cluster.process(2)
    assert follower.commit_index == change


def test_a_notice_from_another_node_than_the_leader_is_ignored() -> None:
    cluster = settled()
    index = replicate_without_acks(cluster, asker=2)
    cluster.queue.clear()
    follower = cluster.node(2)
    follower.step(Message(MT.DURABLE, 3, 2, follower.term, index=index))
    cluster.process(2)
    assert follower.commit_index < index


def test_knowledge_of_the_leader_ends_with_the_term() -> None:
    cluster = settled()
    index = replicate_without_acks(cluster, asker=2)
    notices = durable_to(cluster, 2)
    cluster.queue.clear()
    follower = cluster.node(2)
    term = follower.term
    follower.step(Message(MT.HEARTBEAT, 3, 2, term + 1))  # a newer term, leader 3
    for notice in notices:  # the old leader's notice, late: of the older term
        follower.step(notice)
    follower.step(Message(MT.DURABLE, 3, 2, term + 1, index=index))  # not its entry's term
    cluster.process(2)
    assert follower.commit_index < index


def test_a_deposed_leader_forgets_the_notices_it_had_not_handed_out() -> None:
    cluster = settled()
    leader = cluster.node(1)
    cluster.propose(1, b"w")
    leader.notify_durable(2)
    leader.step(Message(MT.HEARTBEAT, 3, 1, leader.term + 1))  # deposed before its Ready
    assert leader.role is Role.FOLLOWER
    ready = leader.ready()
    assert ready.entries  # still to be written, but vouched for by no notice
    assert not [m for m in ready.messages_after_persist if m.type is MT.DURABLE]
    cluster.handle_ready(cluster.peers[1], ready)
    assert not leader.notify_durable(2)  # on a follower: nothing
    assert not durable_to(cluster, 2)


def test_a_read_on_the_leader_covers_what_a_follower_may_have_committed() -> None:
    """The follower answered a write the leader has not counted yet: a linearizable
    read on the leader must wait for it (its read index is the vouched index)."""
    cluster = settled()
    index = replicate_without_acks(cluster, asker=2)
    for notice in durable_to(cluster, 2):
        cluster.deliver_one(notice)
    cluster.process(2)
    assert cluster.node(2).commit_index == index  # answered there
    leader = cluster.node(1)
    assert leader.commit_index < index
    leader.read_index(b"after")
    cluster.deliver()  # the heartbeat round, and the acknowledgements held back before
    assert cluster.peers[1].read_states == [ReadState(index, b"after")]
    assert cluster.peers[1].applied_index >= index
