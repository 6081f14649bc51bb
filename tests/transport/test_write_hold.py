"""Immediate writes held to the end of a block (`transport/write_hold.py`,
`Transport.holding_writes`): one write per connection, in order, even when the
block raises; a connection lost meanwhile fails what was held for it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from changeagent.transport import ProposalReply, RequestContext
from changeagent.transport.transport import Reply, Request
from changeagent.transport.write_hold import WriteHold
from tests.transport.harness import Node, message, run, started, stop_all, wait_until

CARRIERS = ["tcp", "ws"]


class FakeConnection:
    def __init__(self, name: str, written: list[tuple[str, list[bytes]]]) -> None:
        self.name = name
        self.written = written

    def release(self, bodies: list[bytes], on_failure: Callable[[], None]) -> None:
        self.written.append((self.name, bodies))


def test_writes_in_a_block_go_out_as_it_ends_one_per_connection() -> None:
    written: list[tuple[str, list[bytes]]] = []
    hold = WriteHold()
    a, b = FakeConnection("a", written), FakeConnection("b", written)

    def nothing() -> None:
        pass

    assert not hold.take(a, [b"0"], nothing)  # no block: the caller writes itself
    with hold.holding():
        assert hold.take(a, [b"1"], nothing)
        assert hold.take(b, [b"2"], nothing)
        with hold.holding():  # inside another: part of it
            assert hold.take(a, [b"3", b"4"], nothing)
        assert written == []
    assert written == [("a", [b"1", b"3", b"4"]), ("b", [b"2"])]
    written.clear()
    with pytest.raises(RuntimeError), hold.holding():
        hold.take(a, [b"5"], nothing)
        raise RuntimeError("a callback failed")
    assert written == [("a", [b"5"])]  # what was held still goes
    assert not hold.take(a, [b"6"], nothing)


@pytest.mark.parametrize("carrier", CARRIERS)
def test_answers_given_in_a_hold_go_in_one_write_in_order(carrier: str) -> None:
    """Three requests answered early in one block, a Raft message along with the
    last: one write on the answering side, the answers and the message in order."""

    async def scenario() -> None:
        addresses: dict[int, str] = {}
        contexts: list[RequestContext] = []
        release = asyncio.Event()

        async def waits(context: RequestContext, request: Request) -> Reply:
            contexts.append(context)
            await release.wait()
            return ProposalReply(0, index=0)  # not sent: answered early

        a, b = await started(
            Node(1, carrier, addresses), Node(2, carrier, addresses, on_request=waits)
        )
        try:
            proposals = [
                asyncio.ensure_future(a.transport.propose(2, 0, b"x")) for _ in range(3)
            ]
            await wait_until(lambda: len(contexts) == 3, what="three requests on b")
            [connection] = b.transport._connections
            writes: list[int] = []
            write_bodies = connection.stream.write_bodies

            async def counted(bodies: list[bytes]) -> None:
                writes.append(len(bodies))
                await write_bodies(bodies)

            connection.stream.write_bodies = counted  # type: ignore[method-assign]
            with b.transport.holding_writes():
                for index, context in enumerate(contexts, 1):
                    along = message(2, 1, index=70) if index == 3 else None
                    assert context.reply_now(ProposalReply(0, index=index), along)
                assert writes == []  # held until the block ends
            assert writes == [4]  # three answers and the message, one write
            assert await asyncio.gather(*proposals) == [1, 2, 3]
            assert a.received.get_nowait() == (2, message(2, 1, index=70))
            release.set()
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_connection_lost_during_a_hold_fails_its_requests(carrier: str) -> None:
    """The write at the end of the block finds the connection gone: it is dropped
    as a failed write would be, and the caller's request fails, not hangs."""

    async def scenario() -> None:
        addresses: dict[int, str] = {}
        contexts: list[RequestContext] = []

        async def waits(context: RequestContext, request: Request) -> Reply:
            contexts.append(context)
            await asyncio.Event().wait()
            return ProposalReply(0, index=0)

        a, b = await started(
            Node(1, carrier, addresses), Node(2, carrier, addresses, on_request=waits)
        )
        try:
            proposal = asyncio.ensure_future(a.transport.propose(2, 0, b"x", timeout_s=30))
            await wait_until(lambda: len(contexts) == 1, what="the request on b")
            [connection] = b.transport._connections
            with b.transport.holding_writes():
                assert contexts[0].reply_now(ProposalReply(0, index=5), None)
                connection.stream.protocol.transport.abort()  # type: ignore[attr-defined]
            outcome = (await asyncio.gather(proposal, return_exceptions=True))[0]
            assert isinstance(outcome, Exception)  # failed (disconnected), not answered
            assert getattr(outcome, "code", "") == "disconnected"
        finally:
            await stop_all([a, b])

    run(scenario())
