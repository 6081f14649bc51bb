"""A follower's acknowledgement leaves the moment its inline write's COMMIT returns,
before the storage publishes the rows (not after the whole write path unwinds),
exactly once; never for a batch the storage rejected; and a failure to send it
fails the node without leaving the storage half-published."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from changeagent.raft import Entry, HardState, Message
from changeagent.storage import BatchRejected, Storage, WriteBatch
from tests.node.test_step_ready import Follower, acknowledged, append, run, wait_for
from tests.support.disk import inline_whatever_the_disk


@pytest.fixture(autouse=True)
def _inline(monkeypatch: pytest.MonkeyPatch) -> None:
    inline_whatever_the_disk(monkeypatch)


def record_publishes(storage: Storage, events: list[str]) -> None:
    publish = storage._publish

    def recorded(*arguments: object) -> None:
        events.append("publish")
        publish(*arguments)  # type: ignore[arg-type]

    storage._publish = recorded  # type: ignore[method-assign]


def record_sends(follower: Follower, events: list[str]) -> None:
    def send(message: Message) -> None:
        events.append(f"{message.type.name} {message.index}")
        follower.sent.append(message)

    follower.driver._hooks = dataclasses.replace(follower.driver._hooks, send=send)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        # One entry: written inline, on the loop's thread; acknowledged from inside it.
        (1, ["APPEND_RESPONSE 2", "publish"]),
        # More: the writer thread writes it; the driver sends once the write returns.
        (3, ["publish", "APPEND_RESPONSE 4"]),
    ],
    ids=["inline-before-publish", "writer-thread-after-return"],
)
def test_an_acknowledgement_goes_once_its_write_is_durable(
    tmp_path: Path, entries: int, expected: list[str]
) -> None:
    """After a first write, what the follower does for an APPEND of `entries` more:
    its sends and the storage's publishes, in order; the acknowledgement once."""

    async def body(follower: Follower) -> None:
        events: list[str] = []
        follower.start()
        await follower.holding(1)  # the first write: the log starts (and a vote)
        record_publishes(follower.driver.storage, events)
        record_sends(follower, events)
        follower.driver.step(append(1, entries=entries))
        await wait_for(lambda: 1 + entries in acknowledged(follower.sent))
        assert events == expected
        assert acknowledged(follower.sent).count(1 + entries) == 1, "sent once, not again after"
        assert follower.driver.storage.last_index() == 1 + entries

    run(tmp_path, body)


def test_a_failure_to_send_the_acknowledgement_fails_the_step_not_the_storage(
    tmp_path: Path,
) -> None:
    async def body(follower: Follower) -> None:
        follower.start()
        await follower.holding(1)

        def broken(message: Message) -> None:
            raise RuntimeError("a bug in the send path")

        follower.driver._hooks = dataclasses.replace(follower.driver._hooks, send=broken)
        with pytest.raises(RuntimeError, match="a bug in the send path"):
            follower.driver.step(append(1, entries=1))  # inline: raised from the step
        storage = follower.driver.storage
        assert storage.last_index() == 2, "the COMMIT succeeded and its rows are published"
        # The storage is not failed: it still writes.
        await storage.write(WriteBatch(entries=(Entry(3, 3, 0, b"{}"),)), now_if_idle=True)
        assert storage.last_index() == 3

    run(tmp_path, body)


def test_the_storage_never_calls_back_for_a_batch_it_rejected(tmp_path: Path) -> None:
    async def scenario() -> None:
        storage = Storage.open(tmp_path / "d")
        called: list[str] = []
        try:
            durable = await storage.write(
                WriteBatch(hard_state=HardState(1, 0, 0), entries=(Entry(1, 1, 0, b"{}"),)),
                now_if_idle=True,
                on_durable=lambda: called.append("first"),
            )
            assert (durable, called) == (True, ["first"])
            gap = WriteBatch(entries=(Entry(3, 1, 0, b"{}"),))  # index 2 is missing
            with pytest.raises(BatchRejected):
                await storage.write(gap, now_if_idle=True, on_durable=lambda: called.append("gap"))
            assert called == ["first"]
            assert storage.last_index() == 1
        finally:
            storage.close()

    asyncio.run(scenario())
