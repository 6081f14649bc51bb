"""Terms and elections (§5.1, §5.2, §9.6 PreVote, §4.2.3 leader stickiness).

Plain functions of the `RaftNode` whose state they read and write: the term
rules every message passes through, the election timer, campaigns (pre-vote,
then vote) and the vote handlers of every role.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeagent.raft.messages import TRANSFER_CONTEXT, Message, MessageType
from changeagent.raft.quorum import has_quorum
from changeagent.raft.ready import Role

if TYPE_CHECKING:
    from changeagent.raft.core import RaftNode

_MT = MessageType
_LEADER_MESSAGES = frozenset({_MT.APPEND, _MT.HEARTBEAT, _MT.SNAPSHOT})
_VOTE_REQUESTS = frozenset({_MT.PRE_VOTE, _MT.VOTE})


def on_higher_term(node: RaftNode, message: Message) -> bool:
    """§5.1: adopt a higher term, except where PreVote and stickiness say not to.

    Returns whether the message should still be handled."""
    kind = message.type
    if kind in _VOTE_REQUESTS:
        forced = kind is _MT.VOTE and message.context == TRANSFER_CONTEXT
        if not forced and in_leader_lease(node):
            # §4.2.3: a node that heard from a leader within the minimum
            # election timeout ignores vote requests (disruptive servers).
            return False
        if kind is _MT.PRE_VOTE:
            return True  # a pre-vote never changes anyone's term
    elif kind is _MT.PRE_VOTE_RESPONSE and not message.reject:
        return True  # granted for term + 1: we adopt it only as a candidate
    leader = message.source if kind in _LEADER_MESSAGES else None
    node._become_follower(message.term, leader)
    return True


def on_lower_term(node: RaftNode, message: Message) -> None:
    """§5.1: a stale message is dropped; some are answered so the sender learns our term."""
    kind = message.type
    if kind is _MT.APPEND or kind is _MT.HEARTBEAT:
        # Tell a stale leader about the newer term, so it steps down (it may have
        # been partitioned away while the rest of the cluster moved on).
        node._outbox.send(Message(_MT.APPEND_RESPONSE, node._id, message.source, node._term))
    elif kind is _MT.PRE_VOTE:
        node._outbox.send_after_persist(
            Message(_MT.PRE_VOTE_RESPONSE, node._id, message.source, node._term, reject=True)
        )


def in_leader_lease(node: RaftNode) -> bool:
    """Whether we heard from a leader within the (minimum) election timeout."""
    return node._leader is not None and node._election_elapsed < node._config.election_ticks


def tick_election(node: RaftNode) -> None:
    """A follower's or candidate's tick: campaign after a randomized timeout."""
    node._election_elapsed += 1
    if node._election_elapsed >= node._randomized_timeout and can_campaign(node):
        # §5.2: no word from a leader within the election timeout: campaign.
        campaign(node, pre_vote=node._config.pre_vote, transfer=False)


def can_campaign(node: RaftNode) -> bool:
    """A voter may campaign; so may a server that its latest configuration removes
    (or demotes to learner) while it does not know that change to be committed
    (§4.2.2): the others may still need it, as its log can be the only one
    holding the change. It then wins with a majority of that configuration, not
    counting itself, and steps down once the change commits (simulator seed 772:
    a removed leader whose entry reached no one else deadlocked a two-voter
    cluster)."""
    if node._is_voter():
        return True
    memberships = node._memberships
    latest = memberships.latest_index()
    return node._log.commit < latest and node._id in memberships.at(latest - 1).voters


def campaign(node: RaftNode, *, pre_vote: bool, transfer: bool) -> None:
    """§5.2: ask every voter for its vote; with `pre_vote` first ask whether it
    would grant one (§9.6), so a node cut off from the cluster does not raise
    the term. `transfer` marks the requests as forced by TIMEOUT_NOW."""
    if not can_campaign(node):
        return
    if pre_vote:
        # A pre-vote changes no durable state, so it counts at once.
        node._become_pre_candidate()
        kind, term = _MT.PRE_VOTE, node._term + 1
        node._votes[node._id] = True
        if election_result(node) is True:
            won_election(node)
            return
    else:
        # Our own vote counts only once HardState(term, vote=us) is durable
        # (delivered to ourselves in `advance()`): a leader whose term is not
        # on disk could restart in the old term and vote for someone else in
        # this one, so two leaders would share a term.
        node._become_candidate()
        kind, term = _MT.VOTE, node._term
        node._outbox.send_self_after_persist(Message(_MT.VOTE_RESPONSE, node._id, node._id, term))
    log = node._log
    last_index = log.last_index()
    last_term = log.term(last_index)
    context = TRANSFER_CONTEXT if transfer else b""
    for voter in sorted(node._membership.voters):
        if voter != node._id:
            request = Message(kind, node._id, voter, term, last_term, last_index, context=context)
            # A candidate's term and self-vote must be durable before it asks.
            if pre_vote:
                node._outbox.send(request)
            else:
                node._outbox.send_after_persist(request)


def election_result(node: RaftNode) -> bool | None:
    """True when a quorum of voters granted, False when a quorum refused."""
    voters = node._membership.voters
    granted = sum(1 for voter, vote in node._votes.items() if vote and voter in voters)
    refused = sum(1 for voter, vote in node._votes.items() if not vote and voter in voters)
    if has_quorum(granted, len(voters)):
        return True
    if has_quorum(refused, len(voters)):
        return False
    return None


def won_election(node: RaftNode) -> None:
    """A won pre-vote starts the real election; a won election makes us leader."""
    if node._role is Role.PRE_CANDIDATE:
        campaign(node, pre_vote=False, transfer=False)
    else:
        node._become_leader()


def on_vote_request(node: RaftNode, message: Message) -> None:
    """§5.2, §5.4.1: grant at most one vote per term, only to an up-to-date log."""
    pre_vote = message.type is _MT.PRE_VOTE
    response_type = _MT.PRE_VOTE_RESPONSE if pre_vote else _MT.VOTE_RESPONSE
    can_vote = (
        node._vote == message.source
        or (node._vote == 0 and node._leader is None)
        or (pre_vote and message.term > node._term)
    )
    if can_vote and node._log.is_up_to_date(message.log_term, message.index):
        if not pre_vote:
            node._vote = message.source
            node._election_elapsed = 0
        response = Message(response_type, node._id, message.source, message.term)
    else:
        response = Message(response_type, node._id, message.source, node._term, reject=True)
    node._outbox.send_after_persist(response)


def on_vote_response(node: RaftNode, message: Message) -> None:
    expected = _MT.PRE_VOTE_RESPONSE if node._role is Role.PRE_CANDIDATE else _MT.VOTE_RESPONSE
    if message.type is not expected:
        return
    node._votes.setdefault(message.source, not message.reject)
    result = election_result(node)
    if result is True:
        won_election(node)
    elif result is False:
        node._become_follower(node._term, None)


def on_own_vote(node: RaftNode, message: Message) -> None:
    """Our vote in `message.term` is durable: count it if still campaigning there."""
    if node._role is Role.CANDIDATE and node._term == message.term:
        node._votes.setdefault(node._id, True)
        if election_result(node) is True:
            won_election(node)


def on_leader_message_as_candidate(node: RaftNode, message: Message) -> None:
    # §5.2: a candidate that hears from a leader of its term returns to follower.
    node._become_follower(node._term, message.source)
    node._dispatch(message)
