"""Commit notices held for the next APPEND (changeagent/node/commit_notices.py): the
pure router, the driver's timer, and the release before a member's forwarded write
or read index is answered."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from changeagent.node.commit_notices import HOLD_S, CommitNotices, Timer, is_commit_notice
from changeagent.node.driver import RaftDriver
from changeagent.node.peer_requests import PeerRequests
from changeagent.node.ready_plan import Apply, NoteCommit, Send
from changeagent.raft import Entry, Message, MessageType, RaftConfig
from changeagent.storage import Storage
from changeagent.transport import (
    Proposal,
    ProposalReply,
    ReadIndexReply,
    ReadIndexRequest,
    RequestContext,
)
from tests.support.driver import recording_hooks

ENTRY = Entry(4, 3, 0, b"{}")


def notice(target: int, commit: int) -> Message:
    return Message(MessageType.APPEND, 1, target, 3, log_term=3, index=4, commit=commit)


def append(target: int, commit: int) -> Message:
    return Message(MessageType.APPEND, 1, target, 3, index=3, entries=(ENTRY,), commit=commit)


def heartbeat(target: int, commit: int) -> Message:
    return Message(MessageType.HEARTBEAT, 1, target, 3, commit=commit)


def test_a_notice_is_held_and_the_next_append_to_that_follower_replaces_it() -> None:
    notices = CommitNotices()
    assert is_commit_notice(notice(2, 4)) and not is_commit_notice(append(2, 4))
    assert notices.route([notice(2, 4), notice(3, 4)]) == []
    assert notices.holding
    # The APPEND carries commit 4 as well: the notice is not needed any more.
    assert notices.route([append(2, 4)]) == [append(2, 4)]
    assert notices.release_all() == [notice(3, 4)]
    assert not notices.holding


def test_a_newer_notice_replaces_an_older_one() -> None:
    notices = CommitNotices()
    notices.route([notice(2, 4)])
    notices.route([notice(2, 5)])
    assert notices.release(2) == notice(2, 5)
    assert notices.release(2) is None


def test_any_other_message_to_that_follower_goes_after_the_notice() -> None:
    notices = CommitNotices()
    notices.route([notice(2, 4)])
    out = notices.route([heartbeat(3, 4), heartbeat(2, 4)])
    assert out == [heartbeat(3, 4), notice(2, 4), heartbeat(2, 4)]
    assert not notices.holding


def test_clear_forgets_what_is_held() -> None:
    notices = CommitNotices()
    notices.route([notice(2, 4)])
    notices.clear()
    assert notices.release_all() == []


def test_one_timer_runs_from_the_first_notice_held_until_none_is() -> None:
    notices = CommitNotices()
    notices.route([notice(2, 4)])
    assert notices.timer_change() is Timer.START
    notices.route([notice(3, 4)])
    assert notices.timer_change() is None  # the running timer covers it
    notices.route([append(2, 5), append(3, 5)])
    assert notices.timer_change() is Timer.STOP  # both superseded
    assert notices.timer_change() is None
    notices.route([notice(2, 5)])
    assert notices.timer_change() is Timer.START
    notices.release_all()  # the timer fired
    notices.route([notice(2, 6)])
    assert notices.timer_change() is Timer.START
    notices.clear()  # stopped leading: the executor stops its timer
    notices.route([notice(2, 7)])
    assert notices.timer_change() is Timer.START


KINDS = st.sampled_from(["notice", "append", "heartbeat"])


@given(st.lists(st.tuples(KINDS, st.integers(2, 4)), max_size=40))
def test_no_follower_learns_less_and_other_messages_keep_their_order(
    plan: list[tuple[str, int]],
) -> None:
    """Whatever the Readies send, once the held notices are released every follower
    has been sent the highest commit index meant for it, and every message that is
    not a notice went out, in its order."""
    make = {"notice": notice, "append": append, "heartbeat": heartbeat}
    messages = [make[kind](target, commit) for commit, (kind, target) in enumerate(plan, 1)]
    notices = CommitNotices()
    sent: list[Message] = []
    for start in range(0, len(messages), 3):  # a few messages per Ready
        sent += notices.route(messages[start : start + 3])
    sent += notices.release_all()
    others = [message for message in messages if not is_commit_notice(message)]
    assert [message for message in sent if not is_commit_notice(message)] == others
    for target in (2, 3, 4):
        meant = [message.commit for message in messages if message.target == target]
        learned = [message.commit for message in sent if message.target == target]
        assert max(learned, default=0) == max(meant, default=0)
        assert learned == sorted(learned)  # never an older commit after a newer one


# The driver: a timer releases held notices; a member being answered gets its own now.


def run_driver(tmp_path: Path, body: Any) -> list[Message]:
    sent: list[Message] = []

    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d")
        hooks = recording_hooks(sent)
        config = RaftConfig(node_id=1, election_ticks=10, heartbeat_ticks=1)
        driver = RaftDriver(
            storage, config, 0.05, hooks, applied=0, pending_max=10, rng=random.Random(1)
        )
        try:
            await body(driver, sent)
        finally:
            await driver.stop()
            storage.close()

    asyncio.run(scenario())
    return sent


async def wait_for(condition: Any, deadline_s: float = 5.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(HOLD_S / 4)


def test_the_driver_sends_a_held_notice_when_its_hold_ends(tmp_path: Path) -> None:
    async def body(driver: RaftDriver, sent: list[Message]) -> None:
        await driver._execute(Send((notice(2, 4), heartbeat(3, 4))))
        assert sent == [heartbeat(3, 4)]
        began = time.monotonic()
        await wait_for(lambda: notice(2, 4) in sent)
        assert time.monotonic() - began >= HOLD_S * 0.9

    run_driver(tmp_path, body)


def test_the_driver_sends_no_notice_an_append_replaced(tmp_path: Path) -> None:
    async def body(driver: RaftDriver, sent: list[Message]) -> None:
        await driver._execute(Send((notice(2, 4),)))
        await driver._execute(Send((append(2, 4),)))
        assert driver._notices_due is None  # nothing held: the timer stopped
        await driver._execute(Send((notice(2, 5),)))  # a later write's notice
        await wait_for(lambda: len(sent) == 2)
        assert sent == [append(2, 4), notice(2, 5)]

    run_driver(tmp_path, body)


def test_a_member_about_to_be_answered_gets_its_notice_at_once(tmp_path: Path) -> None:
    async def body(driver: RaftDriver, sent: list[Message]) -> None:
        await driver._execute(Send((notice(2, 4), notice(3, 4))))
        assert driver.take_commit_notice(2) == notice(2, 4)  # the caller sends it
        assert driver.take_commit_notice(2) is None  # nothing more held for it
        assert sent == []

    run_driver(tmp_path, body)


def test_halting_drops_what_is_held(tmp_path: Path) -> None:
    async def body(driver: RaftDriver, sent: list[Message]) -> None:
        await driver._execute(Send((notice(2, 4),)))
        driver.halt("a test")
        assert driver._notices_due is None
        assert driver.take_commit_notice(2) is None
        assert sent == []

    run_driver(tmp_path, body)


class FakeReplica:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def read_index(self) -> int:
        self.events.append("read index")
        return 9

    def after_send(self, callback: Any) -> None:
        callback()

    def take_commit_notice(self, peer: int) -> Any:
        self.events.append(f"take {peer}")
        return f"notice for {peer}"

    def send_message(self, message: Any) -> None:
        self.events.append(f"sent {message}")


class FakeChanges:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def propose_change(self, change: Any, key: str, on_applied: Any = None) -> Entry:
        self.events.append("committed")
        entry = Entry(9, 3, 0, b"{}")
        if on_applied is not None and not key:  # as ChangeLog: a change with no key
            on_applied(entry)
        return entry


def test_peer_requests_release_the_notice_with_the_answer() -> None:
    events: list[str] = []
    requests = PeerRequests(FakeReplica(events), FakeChanges(events), None, None)  # type: ignore[arg-type]

    def context(idle: bool) -> RequestContext:
        sent = [False]  # as the transport's early reply: per request

        def reply_now(reply: Any, along: Any) -> bool:
            if sent[0]:
                events.append(f"along {along}")
            elif idle:
                events.append(f"answered early: {reply.index} with {along}")
                sent[0] = True
            return sent[0]

        return RequestContext(peer_id=7, member=True, address="127.0.0.1:1", reply_now=reply_now)

    async def scenario() -> None:
        change = b'{"data": 1}'
        reply = await requests.on_request(context(True), Proposal(1, 0, change))
        assert reply == ProposalReply(0, index=9)
        reply = await requests.on_request(context(True), Proposal(1, 0, change, key="k"))
        assert reply == ProposalReply(0, index=9)
        reply = await requests.on_request(context(True), ReadIndexRequest(2))
        assert reply == ReadIndexReply(0, index=9)
        reply = await requests.on_request(context(False), Proposal(1, 0, change))
        assert reply == ProposalReply(0, index=9)

    asyncio.run(scenario())
    assert events == [
        # a new change: answered from its on_applied with the notice (the asking
        # member waits with its client's answer ready, written when it applies);
        # a notice held again by the time the handler returns goes too
        "committed", "take 7", "answered early: 9 with notice for 7",
        "take 7", "along notice for 7",
        # a keyed one and a read index: answered when the handler returns, at once
        "committed", "take 7", "answered early: 9 with notice for 7",
        "read index", "take 7", "answered early: 9 with notice for 7",
        # a busy connection: the notice goes at once, the answer as the handler returns
        "committed", "take 7", "sent notice for 7", "take 7", "sent notice for 7",
    ]  # fmt: skip


def test_after_send_runs_once_the_messages_after_the_apply_are_routed(tmp_path: Path) -> None:
    """A forwarded write's answer, deferred from its apply with `after_send`, finds
    the commit notice of the same Ready held (both then go in one write); with no
    Send right after the apply, it runs at once, before the next step."""
    events: list[str] = []

    async def body(driver: RaftDriver, sent: list[Message]) -> None:
        async def apply(entries: tuple[Entry, ...]) -> None:
            driver.after_send(lambda: events.append(f"answer with {driver.take_commit_notice(2)}"))

        driver._hooks = dataclasses.replace(driver._hooks, apply=apply)
        execute = driver._execute

        async def traced(step: Any) -> None:
            events.append(type(step).__name__)
            await execute(step)

        driver._execute = traced  # type: ignore[method-assign]
        await driver._execute_plan([NoteCommit(4), Apply((ENTRY,)), Send((notice(2, 4),))])
        assert events == ["NoteCommit", "Apply", "Send", f"answer with {notice(2, 4)}"]
        events.clear()
        await driver._execute_plan([Apply((ENTRY,)), NoteCommit(4)])
        assert events == ["Apply", "answer with None", "NoteCommit"]
        assert sent == []  # the notice went with the answer, not on its own

    run_driver(tmp_path, body)
