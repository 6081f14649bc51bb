"""The Ready planner, table by table: which steps, in which order, for each kind
of Ready. The driver and the simulator both execute these plans."""

from __future__ import annotations

from changeagent.node.ready_plan import (
    COMMIT_STORED_LAG_MAX,
    Apply,
    InstallSnapshot,
    NoteCommit,
    Persist,
    ReadyPlanner,
    Send,
)
from changeagent.raft import Entry, HardState, Membership, Message, MessageType, Ready, Snapshot

APPEND = Message(MessageType.APPEND, 1, 2, 3)
ANSWER = Message(MessageType.APPEND_RESPONSE, 2, 1, 3)


def entries(first: int, last: int, term: int = 3) -> tuple[Entry, ...]:
    return tuple(Entry(index, term, 0, b"x") for index in range(first, last + 1))


def test_a_leader_sends_before_it_persists_and_acknowledges_after() -> None:
    planner = ReadyPlanner(HardState(3, 1, 4))
    ready = Ready(
        hard_state=HardState(3, 1, 4),
        entries=entries(5, 6),
        messages=(APPEND,),
        messages_after_persist=(ANSWER,),
    )
    assert planner.plan(ready, durable_last_index=4) == [
        Send((APPEND,)),
        Persist(None, entries(5, 6), None),  # nothing new in the hard state
        Send((ANSWER,)),
    ]


def test_a_commit_alone_is_noted_applied_then_sent_without_a_write() -> None:
    planner = ReadyPlanner(HardState(3, 1, 4))
    ready = Ready(
        hard_state=HardState(3, 1, 6), committed_entries=entries(5, 6), messages=(APPEND,)
    )
    assert planner.plan(ready, durable_last_index=6) == [
        NoteCommit(6),
        Apply(entries(5, 6)),
        Send((APPEND,)),
    ]
    # Noted, the commit index alone does not go to the database with the next write.
    following = Ready(entries=entries(7, 7))
    assert planner.plan(following, durable_last_index=6) == [Persist(None, entries(7, 7), None)]
    planner.persisted(Persist(None, entries(7, 7), None))
    assert planner.durable_hard_state == HardState(3, 1, 4)
    assert planner.unsynced_hard_state == HardState(3, 1, 6)


def test_a_commit_index_far_ahead_of_the_stored_one_rides_the_next_write() -> None:
    planner = ReadyPlanner(HardState(3, 1, 4))
    just_below = HardState(3, 1, 4 + COMMIT_STORED_LAG_MAX - 1)
    ready = Ready(hard_state=just_below, entries=entries(5, 5))
    assert planner.plan(ready, durable_last_index=4)[-1] == Persist(None, entries(5, 5), None)
    far = HardState(3, 1, 4 + COMMIT_STORED_LAG_MAX)
    ready = Ready(hard_state=far, entries=entries(6, 6))
    assert planner.plan(ready, durable_last_index=5)[-1] == Persist(far, entries(6, 6), None)
    planner.persisted(Persist(far, entries(6, 6), None))
    assert planner.durable_hard_state == far
    assert planner.unsynced_hard_state is None


def test_a_new_term_goes_with_the_write_and_its_commit_index_too() -> None:
    planner = ReadyPlanner(HardState(3, 1, 4))
    commit_only = Ready(hard_state=HardState(3, 1, 6), committed_entries=entries(5, 6))
    planner.plan(commit_only, durable_last_index=6)
    new_term = Ready(hard_state=HardState(4, 0, 6), entries=entries(7, 7, term=4))
    assert planner.plan(new_term, durable_last_index=6) == [
        Persist(HardState(4, 0, 6), entries(7, 7, term=4), None)
    ]


def committing_and_appending(**messages: tuple[Message, ...]) -> Ready:
    """A Ready under load: entries 5..7 committed (5 and 6 on disk), 7..8 to append."""
    return Ready(
        hard_state=HardState(3, 1, 7),
        entries=entries(7, 8),
        committed_entries=entries(5, 7),
        **messages,
    )


def test_committed_entries_already_durable_apply_before_the_next_fsync() -> None:
    """A leader's Ready: the previous batch committed, the next one to append."""
    planner = ReadyPlanner(HardState(3, 1, 4))
    ready = committing_and_appending(messages=(APPEND,))
    assert planner.plan(ready, durable_last_index=6) == [
        Send((APPEND,)),
        NoteCommit(6),
        Apply(entries(5, 6)),  # on disk before this Ready: answered first
        Persist(None, entries(7, 8), None),
        NoteCommit(7),
        Apply(entries(7, 7)),  # arrives with this Ready: only after the fsync
    ]


def test_a_follower_acknowledges_before_it_applies() -> None:
    """The same on a follower: its acknowledgement is on the leader's path to the
    next commit, its readers are not, so it goes first."""
    planner = ReadyPlanner(HardState(3, 1, 4))
    ready = committing_and_appending(messages_after_persist=(ANSWER,))
    assert planner.plan(ready, durable_last_index=6) == [
        Persist(None, entries(7, 8), None),
        Send((ANSWER,)),
        NoteCommit(7),
        Apply(entries(5, 7)),
    ]


def test_an_append_that_rewrites_a_suffix_applies_nothing_early() -> None:
    planner = ReadyPlanner(HardState(3, 1, 4))
    ready = Ready(entries=entries(5, 6, term=4), committed_entries=entries(5, 5, term=4))
    plan = planner.plan(ready, durable_last_index=9)  # 5..9 on disk are being replaced
    assert plan == [
        Persist(None, entries(5, 6, term=4), None),
        NoteCommit(5),
        Apply(entries(5, 5, term=4)),
    ]


def test_a_new_vote_is_written_before_the_vote_is_sent() -> None:
    planner = ReadyPlanner(HardState(3, 1, 4))
    vote = Message(MessageType.VOTE_RESPONSE, 2, 5, 4)
    ready = Ready(hard_state=HardState(4, 5, 4), messages_after_persist=(vote,))
    assert planner.plan(ready, durable_last_index=4) == [
        Persist(HardState(4, 5, 4), (), None),
        Send((vote,)),
    ]


def test_a_snapshot_is_persisted_then_installed_then_later_entries_applied() -> None:
    planner = ReadyPlanner(HardState(3, 1, 4))
    snapshot = Snapshot(10, 3, Membership(frozenset({1, 2, 3})), b"state")
    ready = Ready(
        hard_state=HardState(3, 1, 10), snapshot=snapshot, messages_after_persist=(ANSWER,)
    )
    assert planner.plan(ready, durable_last_index=4) == [
        Persist(None, (), snapshot),  # a snapshot is its own commit floor
        Send((ANSWER,)),
        InstallSnapshot(snapshot),
    ]
