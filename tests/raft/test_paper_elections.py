"""One test per rule of the Raft paper about terms and elections (§5.1, §5.2, §5.4.1).

Section numbers refer to Ongaro's dissertation "Consensus: Bridging Theory and
Practice" (2014); §5 there is the same as §5 of the Raft paper.
"""

from __future__ import annotations

from changeagent.raft import HardState, Message, MessageType, Role

from .harness import Cluster, drain, make_node

MT = MessageType


def vote_request(source: int, term: int, log_term: int = 0, index: int = 0) -> Message:
    return Message(MT.VOTE, source, 1, term, log_term, index)


def test_5_1_a_server_adopts_a_higher_term_from_any_message() -> None:
    """§5.1: if a server's current term is smaller than another's, it updates it."""
    node, _ = make_node()
    node.step(Message(MT.HEARTBEAT, 2, 1, 5))
    assert (node.term, node.role, node.leader_id) == (5, Role.FOLLOWER, 2)


def test_5_1_a_leader_that_sees_a_higher_term_reverts_to_follower() -> None:
    """§5.1: if a candidate or leader discovers its term is out of date, it
    immediately reverts to follower state."""
    cluster = Cluster(3)
    cluster.elect(1)
    leader = cluster.node(1)
    leader.step(Message(MT.APPEND_RESPONSE, 2, 1, leader.term + 1))
    assert leader.role is Role.FOLLOWER and leader.term == 2 and leader.leader_id is None


def test_5_1_a_request_with_a_stale_term_is_rejected() -> None:
    """§5.1: a server that receives a request with a stale term rejects it; the
    answer carries the newer term so that the stale leader steps down."""
    node, log = make_node(hard_state=HardState(term=3))
    node.step(Message(MT.APPEND, 2, 1, 2, 0, 0, ()))
    [response] = drain(node, log)
    assert response.type is MT.APPEND_RESPONSE and response.term == 3
    assert node.last_index == 0 and node.leader_id is None


def test_5_2_a_follower_that_hears_nothing_for_an_election_timeout_becomes_candidate() -> None:
    """§5.2: a follower that receives no communication over an election timeout
    begins an election: it increments its term, votes for itself and asks the others."""
    node, _ = make_node(pre_vote=False)
    for _ in range(2 * node.config.election_ticks):
        node.tick()
        if node.role is Role.CANDIDATE:
            break
    assert node.role is Role.CANDIDATE and node.term == 1 and node.vote == 1
    ready = node.ready()
    assert ready.hard_state == HardState(term=1, vote=1, commit=0)
    # The request promises a durable vote for itself: it waits for persistence.
    assert sorted(m.target for m in ready.messages_after_persist if m.type is MT.VOTE) == [2, 3]


def test_5_2_election_timeouts_are_randomized_within_one_to_two_timeouts() -> None:
    """§5.2: election timeouts are chosen randomly from a fixed interval
    ([election_ticks, 2 * election_ticks) here) so that split votes are rare."""
    timeouts = set()
    for seed in range(40):
        node, _ = make_node(seed=seed, pre_vote=False)
        ticks = 0
        while node.role is Role.FOLLOWER:
            node.tick()
            ticks += 1
        timeouts.add(ticks)
    assert min(timeouts) >= 10 and max(timeouts) < 20 and len(timeouts) > 3


def test_5_2_a_candidate_with_votes_from_a_majority_becomes_leader() -> None:
    """§5.2: a candidate wins once it receives votes from a majority of the servers."""
    node, log = make_node(voters=(1, 2, 3, 4, 5), pre_vote=False)
    node.campaign()
    drain(node, log)  # its own vote counts once it is durable
    node.step(Message(MT.VOTE_RESPONSE, 2, 1, 1))
    assert node.role is Role.CANDIDATE  # 2 of 5 is not a majority
    node.step(Message(MT.VOTE_RESPONSE, 3, 1, 1))
    assert node.role is Role.LEADER and node.leader_id == 1  # type: ignore[comparison-overlap]


def test_5_2_a_candidate_refused_by_a_majority_returns_to_follower() -> None:
    """§5.2: with a majority of refusals the election is lost; wait for a leader."""
    node, _ = make_node(pre_vote=False)
    node.campaign()
    node.step(Message(MT.VOTE_RESPONSE, 2, 1, 1, reject=True))
    node.step(Message(MT.VOTE_RESPONSE, 3, 1, 1, reject=True))
    assert node.role is Role.FOLLOWER and node.term == 1


def test_5_2_each_server_votes_for_at_most_one_candidate_per_term() -> None:
    """§5.2: each server votes for at most one candidate in a given term, on a
    first-come-first-served basis."""
    node, _ = make_node()
    node.step(vote_request(2, 1))
    node.step(vote_request(3, 1))
    node.step(vote_request(2, 1))  # a retransmission gets the same answer
    responses = drain(node)
    assert [(m.target, m.reject) for m in responses] == [(2, False), (3, True), (2, False)]
    assert node.vote == 2


def test_5_2_a_candidate_that_hears_from_a_leader_of_its_term_becomes_follower() -> None:
    """§5.2: if the AppendEntries' term is at least the candidate's, it recognizes the leader."""
    node, _ = make_node(pre_vote=False)
    node.campaign()
    node.step(Message(MT.APPEND, 2, 1, 1, 0, 0, ()))
    assert node.role is Role.FOLLOWER and node.leader_id == 2 and node.term == 1


def test_5_2_a_candidate_starts_a_new_election_when_its_election_times_out() -> None:
    """§5.2: on a split vote, the candidate times out and starts a new election
    by incrementing its term."""
    node, _ = make_node(pre_vote=False)
    node.campaign()
    for _ in range(2 * node.config.election_ticks):
        node.tick()
    assert node.role is Role.CANDIDATE and node.term == 2


def test_5_2_the_leader_sends_heartbeats_to_maintain_its_authority() -> None:
    """§5.2: leaders send periodic heartbeats (empty AppendEntries) to all followers."""
    cluster = Cluster(3, heartbeat_ticks=2)
    cluster.elect(1)
    cluster.tick(1)
    assert cluster.take() == []
    cluster.tick(1)
    heartbeats = cluster.take()
    assert sorted((m.type, m.target) for m in heartbeats) == [(MT.HEARTBEAT, 2), (MT.HEARTBEAT, 3)]


def test_5_2_followers_that_hear_heartbeats_never_start_an_election() -> None:
    """§5.2: a server remains a follower as long as it receives valid RPCs from a leader."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.tick_all(100)
    assert cluster.leaders() == [1] and {p.node.term for p in cluster.peers.values()} == {1}


def test_5_4_1_a_vote_is_refused_to_a_candidate_whose_last_term_is_older() -> None:
    """§5.4.1: the voter denies its vote if its own log is more up to date:
    the log whose last entry has the later term is more up to date."""
    node, _ = make_node(entries=[(1, 1), (2, 2)], hard_state=HardState(term=2))
    node.step(vote_request(2, 3, log_term=1, index=5))
    [response] = drain(node)
    assert response.reject and node.vote == 0


def test_5_4_1_a_vote_is_refused_to_a_candidate_with_a_shorter_log_of_the_same_term() -> None:
    """§5.4.1: if the logs end with the same term, the longer log is more up to date."""
    node, _ = make_node(entries=[(1, 1), (2, 1)], hard_state=HardState(term=1))
    node.step(vote_request(2, 2, log_term=1, index=1))
    [response] = drain(node)
    assert response.reject


def test_5_4_1_a_vote_is_granted_to_a_candidate_at_least_as_up_to_date() -> None:
    """§5.4.1: a candidate whose log is at least as up to date gets the vote."""
    node, _ = make_node(entries=[(1, 1), (2, 1)], hard_state=HardState(term=1))
    node.step(vote_request(2, 2, log_term=1, index=2))
    [response] = drain(node)
    assert not response.reject and node.vote == 2 and node.term == 2


def test_5_4_1_the_vote_is_durable_before_the_response_is_sent() -> None:
    """§5.2 + Figure 2: currentTerm and votedFor are persisted before responding."""
    node, _ = make_node()
    node.step(vote_request(2, 1))
    ready = node.ready()
    assert ready.hard_state == HardState(term=1, vote=2, commit=0)
    assert ready.messages == () and [m.type for m in ready.messages_after_persist] == [
        MT.VOTE_RESPONSE
    ]


def test_5_2_a_single_voter_elects_itself_once_its_vote_is_durable() -> None:
    """§5.2 (degenerate majority): one voter is its own majority, but its vote
    counts only once HardState(term, vote) is persisted (Figure 2: persistent state
    is updated on stable storage before responding, here to itself)."""
    node, log = make_node(voters=(1,))
    node.campaign()
    assert node.role is Role.CANDIDATE and node.term == 1
    ready = node.ready()
    assert ready.hard_state == HardState(term=1, vote=1, commit=0)
    node.advance(ready)
    assert node.role is Role.LEADER and node.term == 1  # type: ignore[comparison-overlap]
    drain(node, log)  # the no-op is persisted, so it commits
    assert node.commit_index == 1


def test_5_2_a_candidate_does_not_count_its_vote_before_it_is_durable() -> None:
    """§5.2 + Figure 2 (simulator seed 45559): a lone voter that took its term in
    memory but crashed before persisting it restarts in the old term and may vote
    for another candidate in the new term. So it must not lead that term before its
    own vote is durable, or two leaders would share a term (§5.2 election safety)."""
    node, _ = make_node(voters=(1,), pre_vote=False)
    node.campaign()
    assert node.role is Role.CANDIDATE
    ready = node.ready()  # the disk stalls: this Ready is never advanced
    assert ready.hard_state == HardState(term=1, vote=1, commit=0)
    assert ready.entries == () and ready.messages == ()
    node.tick()
    assert node.role is Role.CANDIDATE and not node.has_ready()
    # Crash before the Ready is persisted: the restarted node is in term 0 and
    # grants node 2's vote for term 1, which is safe because node 1 never led it.
    restarted, _ = make_node(voters=(1,), pre_vote=False)
    restarted.step(vote_request(2, 1))
    [response] = restarted.ready().messages_after_persist
    assert response.type is MT.VOTE_RESPONSE and not response.reject


def test_5_2_the_own_vote_is_counted_only_in_the_term_it_was_cast() -> None:
    """§5.2: a vote is for one term; if the candidate moved to a newer term before
    the Ready was advanced, the durable vote of the old term does not count."""
    node, log = make_node(voters=(1,), pre_vote=False)
    node.campaign()
    ready = node.ready()
    node.step(Message(MT.HEARTBEAT, 2, 1, 5))  # a leader of term 5 exists
    node.advance(ready)
    assert node.role is Role.FOLLOWER and node.term == 5
    drain(node, log)
    assert node.role is Role.FOLLOWER


def test_9_6_a_pre_candidate_counts_its_own_pre_vote_at_once() -> None:
    """§9.6: a pre-vote changes neither term nor vote, so nothing needs to be
    durable: the pre-candidate counts itself at once and asks with `messages`."""
    node, _ = make_node(voters=(1, 2, 3))
    while node.role is Role.FOLLOWER:
        node.tick()
    assert node.role is Role.PRE_CANDIDATE
    ready = node.ready()
    assert [m.type for m in ready.messages] == [MT.PRE_VOTE, MT.PRE_VOTE]
    node.step(Message(MT.PRE_VOTE_RESPONSE, 2, 1, 1))  # with its own: 2 of 3
    assert node.role is Role.CANDIDATE and node.term == 1  # type: ignore[comparison-overlap]
