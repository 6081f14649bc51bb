"""Commit notices: a leader's empty APPENDs, held briefly for the next APPEND.

When a write commits, the Raft core tells every follower the new commit index at
once, in an APPEND without entries (a follower it replicates to no longer answers
it: `COMMIT_ONLY_CONTEXT`). With one client writing one change after another, the
next write's APPEND follows ~1 ms later (answer, client, request, proposal:
measured here) and carries that commit index anyway: the notice is a second
message per write per follower on three processes that share the CPU.

`CommitNotices` sits between the Ready's messages and the wire. It holds the
newest notice per follower and lets it go:
- superseded, when an APPEND to that follower goes out (it carries a commit index
  at least as high: the leader's commit only grows);
- ahead of any other message to that follower (a heartbeat, a read-index answer),
  so what the follower learns keeps its order;
- when the executor releases it: after `HOLD_S` (the executor's timer), or for a
  follower that waits for this commit (its forwarded write or read index is being
  answered: it serves the client only once it has applied the index; the answer
  and the notice then go in one write, `RaftDriver.take_commit_notice`).

Holding, dropping or delaying a message is always safe in Raft (the network may do
all three); what it costs is that a follower's readers see an isolated write up to
`HOLD_S` later. Pure: no clock, no I/O; the driver and the simulator run it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from changeagent.raft import Message, MessageType

HOLD_S = 0.002  # longer than one client's turn-around (~1 ms here), short for readers


def is_commit_notice(message: Message) -> bool:
    return message.type is MessageType.APPEND and not message.entries


class Timer(Enum):
    """What the executor's one timer must do after a `route` (`timer_change`)."""

    START = "start"  # notices are held and no timer runs: release them in HOLD_S
    STOP = "stop"  # every held notice was superseded: the running timer is not needed


class CommitNotices:
    def __init__(self) -> None:
        self._held: dict[int, Message] = {}  # follower -> its newest notice
        self._timing = False  # the executor's timer runs

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def route(self, messages: Iterable[Message]) -> list[Message]:
        """The messages to send now, in order; notices among them are held."""
        out: list[Message] = []
        held = self._held
        for message in messages:
            if is_commit_notice(message):
                held[message.target] = message  # a newer commit than the one it replaces
                continue
            notice = held.pop(message.target, None)
            if notice is not None and message.type is not MessageType.APPEND:
                out.append(notice)
            out.append(message)
        return out

    def timer_change(self) -> Timer | None:
        """One timer runs from the first notice held until the notices go out or
        are all superseded; stopping it then keeps it from cutting short the
        hold of a later write's notice."""
        if self._held and not self._timing:
            self._timing = True
            return Timer.START
        if not self._held and self._timing:
            self._timing = False
            return Timer.STOP
        return None

    def release(self, peer: int) -> Message | None:
        return self._held.pop(peer, None)

    def release_all(self) -> list[Message]:
        """The timer fired: everything held goes out."""
        released = list(self._held.values())
        self._held.clear()
        self._timing = False
        return released

    def clear(self) -> None:
        """This node stopped leading: its notices are of no use any more (the
        executor stops its timer)."""
        self._held.clear()
        self._timing = False
