"""Outbox: what a core has to say, collected between two Ready batches.

Handlers only append here; `take_ready` turns the lot into one `Ready` and
`acknowledge` closes it. Keeping the outputs apart from the Raft state makes
"one outstanding Ready" (DESIGN.md) a rule of this one class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeagent.raft.errors import RaftError
from changeagent.raft.messages import Message
from changeagent.raft.ready import ReadState, Ready

if TYPE_CHECKING:
    from collections.abc import Callable

    from changeagent.raft.entry import HardState
    from changeagent.raft.log import RaftLog
    from changeagent.raft.ready import SoftState


class Outbox:
    """Messages, confirmed reads and state changes for the next Ready."""

    __slots__ = (
        "_hard_state",
        "_log",
        "_messages",
        "_messages_after_persist",
        "_outstanding",
        "_prev_hard_state",
        "_prev_soft_state",
        "_read_states",
        "_self_after_persist",
        "_soft_state",
        "_state_changed",
        "_steps_on_advance",
    )

    def __init__(
        self,
        log: RaftLog,
        hard_state: Callable[[], HardState],
        soft_state: Callable[[], SoftState],
        state_changed: Callable[[HardState, SoftState], bool],
    ) -> None:
        # The node's log, and how to read its current hard and soft state: built
        # only when a Ready is taken; `has_ready`, which runs after every input
        # (~6 times a write on each member), only compares them with the last ones
        # reported (`state_changed`), without building either.
        self._log = log
        self._hard_state = hard_state
        self._soft_state = soft_state
        self._state_changed = state_changed
        self._messages: list[Message] = []
        self._messages_after_persist: list[Message] = []
        self._read_states: list[ReadState] = []
        # Messages to this node itself that promise durable state (a candidate's
        # own vote): taken with the next Ready and stepped in its `advance()`.
        self._self_after_persist: list[Message] = []
        self._steps_on_advance: list[Message] = []
        # A Ready reports hard and soft state only when they changed since the last.
        self._prev_hard_state = hard_state()
        self._prev_soft_state = soft_state()
        self._outstanding: Ready | None = None

    def send(self, message: Message) -> None:
        """Queue a message that may leave before anything is persisted."""
        self._messages.append(message)

    def send_after_persist(self, message: Message) -> None:
        """Queue a message that promises durable state (a vote, an append response)."""
        self._messages_after_persist.append(message)

    def send_self_after_persist(self, message: Message) -> None:
        """Queue a message to this node, stepped once the next Ready is durable."""
        self._self_after_persist.append(message)

    def take_messages(self) -> tuple[Message, ...]:
        """The messages that may leave before anything is persisted, taken now
        instead of with the next Ready (which then does not carry them)."""
        messages = tuple(self._messages)
        self._messages.clear()
        return messages

    def add_read_state(self, read_state: ReadState) -> None:
        self._read_states.append(read_state)

    def has_ready(self) -> bool:
        """Whether `take_ready` would return something to do (False while one is outstanding)."""
        if self._outstanding is not None:
            return False
        log = self._log
        return bool(
            self._messages
            or self._messages_after_persist
            or self._self_after_persist
            or log.unstable
            or log.pending_snapshot is not None
            or self._read_states
            or log.has_next_committed()
            or self._state_changed(self._prev_hard_state, self._prev_soft_state)
        )

    def take_ready(self, max_apply_bytes: int) -> Ready:
        """Hand out everything collected as one Ready, which becomes the outstanding one."""
        if self._outstanding is not None:
            raise RaftError("call advance() on the previous Ready first")
        log = self._log
        hard_state = self._hard_state()
        soft_state = self._soft_state()
        ready = Ready(
            hard_state=hard_state if hard_state != self._prev_hard_state else None,
            entries=tuple(log.unstable),
            snapshot=log.pending_snapshot,
            messages=tuple(self._messages),
            messages_after_persist=tuple(self._messages_after_persist),
            committed_entries=tuple(log.next_committed(max_apply_bytes)),
            read_states=tuple(self._read_states),
            soft_state=soft_state if soft_state != self._prev_soft_state else None,
        )
        self._prev_hard_state = hard_state
        self._prev_soft_state = soft_state
        self._messages.clear()
        self._messages_after_persist.clear()
        self._read_states.clear()
        self._steps_on_advance, self._self_after_persist = self._self_after_persist, []
        self._outstanding = ready
        return ready

    def acknowledge(self, ready: Ready) -> None:
        """The node says `ready` is durable and applied; another may be taken."""
        if ready is not self._outstanding:
            raise RaftError("advance() must be given the outstanding Ready")
        self._outstanding = None

    def take_steps_on_advance(self) -> list[Message]:
        """The messages to this node that the acknowledged Ready made durable."""
        steps, self._steps_on_advance = self._steps_on_advance, []
        return steps
