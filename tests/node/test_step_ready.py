"""The driver handles the Ready a member's message makes in `step`'s own call (no
loop iteration before an acknowledgement's commit is applied and answered), one
Ready at a time with the Ready loop, and fails loudly either way."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from changeagent.node.driver import DriverHooks, RaftDriver
from changeagent.raft import Entry, Message, MessageType, RaftConfig
from changeagent.storage import Storage

TERM = 3
LEADER = 2


def append(index: int, entries: int = 0, commit: int = 0) -> Message:
    """The leader's APPEND after `index` (all entries of TERM), carrying `entries` more."""
    new = tuple(Entry(index + n, TERM, 0, b"{}") for n in range(1, entries + 1))
    log_term = TERM if index else 0
    return Message(
        MessageType.APPEND, LEADER, 1, TERM, log_term=log_term, index=index, entries=new,
        commit=commit,
    )  # fmt: skip


def acknowledged(sent: list[Message]) -> list[int]:
    return [m.index for m in sent if m.type is MessageType.APPEND_RESPONSE and not m.reject]


class Follower:
    """A driver for node 1 whose hooks record what it sends and applies; `apply`
    and `after_advance` may be replaced to suspend or fail."""

    def __init__(self, storage: Storage) -> None:
        self.sent: list[Message] = []
        self.applied: list[int] = []
        self.apply_extra: Callable[[], Awaitable[None]] | None = None
        self.after_advance_extra: Callable[[], Awaitable[None]] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.events: list[str] = []  # "sent", "held", "applied", in order
        hooks = DriverHooks(
            send=self._send,
            apply=self._apply,
            install_snapshot=self._nothing,
            on_role_change=lambda role, leader: None,
            snapshot_meta=lambda snapshot: {},
            after_advance=self._after_advance,
            send_held=lambda: self.events.append("held"),
        )
        config = RaftConfig(node_id=1, election_ticks=1000, heartbeat_ticks=1)
        self.driver = RaftDriver(
            storage, config, 3600, hooks, applied=0, pending_max=10, rng=random.Random(1)
        )

    def start(self) -> None:
        self.driver.start(self._spawn)

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self.tasks.append(task)
        return task

    async def _nothing(self, *_: Any) -> None:
        return None

    def _send(self, message: Message) -> None:
        self.sent.append(message)
        self.events.append("sent")

    async def _apply(self, entries: tuple[Entry, ...]) -> None:
        if self.apply_extra is not None:
            await self.apply_extra()
        self.applied += [entry.index for entry in entries]
        self.events.append("applied")

    async def _after_advance(self) -> None:
        if self.after_advance_extra is not None:
            await self.after_advance_extra()

    async def holding(self, count: int) -> None:
        """Step an APPEND of `count` entries and wait until they are acknowledged."""
        self.driver.step(append(0, entries=count))
        await wait_for(lambda: count in acknowledged(self.sent))


def run(tmp_path: Path, body: Callable[[Follower], Awaitable[None]]) -> None:
    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d")
        follower = Follower(storage)
        try:
            await body(follower)
        finally:
            await follower.driver.stop()
            storage.close()

    asyncio.run(scenario())


async def wait_for(condition: Callable[[], bool], deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_a_commit_a_message_brings_is_applied_and_answered_in_the_steps_own_call(
    tmp_path: Path,
) -> None:
    async def body(follower: Follower) -> None:
        follower.start()
        await follower.holding(2)
        answers = len(acknowledged(follower.sent))
        follower.driver.step(append(2, commit=2))
        # No await since the step: the Ready loop has not run; `step` did it all.
        assert follower.applied == [1, 2]
        assert len(acknowledged(follower.sent)) == answers + 1

    run(tmp_path, body)


def test_the_ready_loop_waits_while_a_steps_handling_is_suspended(tmp_path: Path) -> None:
    async def body(follower: Follower) -> None:
        follower.start()
        await follower.holding(2)
        gate = asyncio.Event()
        entered = asyncio.Event()

        async def held() -> None:
            entered.set()
            await gate.wait()

        follower.after_advance_extra = held
        follower.driver.step(append(2, commit=2))  # applies 1-2, then waits in the hook
        await entered.wait()
        follower.after_advance_extra = None
        follower.driver.step(append(2, entries=1))  # a new entry: a Ready is due
        follower.driver.wake()
        for _ in range(20):  # the Ready loop runs meanwhile, and must not take it
            await asyncio.sleep(0)
        assert follower.driver.core.has_ready()  # still there: nobody took it
        assert acknowledged(follower.sent)[-1] == 2
        gate.set()  # the step's handling ends and wakes the loop, which writes entry 3
        await wait_for(lambda: acknowledged(follower.sent)[-1] == 3)
        assert follower.applied == [1, 2]

    run(tmp_path, body)


def test_an_error_before_the_handling_suspends_is_raised_to_the_caller(tmp_path: Path) -> None:
    async def body(follower: Follower) -> None:
        await follower.holding(2)

        async def planted() -> None:
            raise RuntimeError("planted in apply")

        follower.apply_extra = planted
        with pytest.raises(RuntimeError, match="planted in apply"):
            follower.driver.step(append(2, commit=2))

    run(tmp_path, body)


def test_an_error_after_the_handling_suspended_ends_the_ready_loop(tmp_path: Path) -> None:
    async def body(follower: Follower) -> None:
        follower.start()
        await follower.holding(2)

        async def planted() -> None:
            await asyncio.sleep(0)  # suspended: the rest runs in a task
            raise RuntimeError("planted after a suspension")

        follower.apply_extra = planted
        follower.driver.step(append(2, commit=2))
        ready_loop = follower.tasks[0]
        await wait_for(ready_loop.done)
        with pytest.raises(RuntimeError, match="planted after a suspension"):
            ready_loop.result()

    run(tmp_path, body)


def test_the_transport_sends_what_it_held_before_the_apply_after_an_acknowledgement(
    tmp_path: Path,
) -> None:
    """The acknowledgement a write sends (perhaps held back by the transport behind
    an earlier write on its link this iteration) goes before the apply that follows
    it: `send_held` is called right after every send."""

    async def body(follower: Follower) -> None:
        follower.start()
        await follower.holding(1)
        follower.events.clear()
        follower.driver.step(append(1, entries=1, commit=2))
        await wait_for(lambda: follower.applied[-1:] == [2])
        assert follower.events[:3] == ["sent", "held", "applied"]

    run(tmp_path, body)
