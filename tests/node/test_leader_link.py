"""LeaderLink: a forwarded write is awaited in its caller's task, and it ends
without waiting out its timeout when the leader changes.

- A leader that never answers: CommitTimeout for the caller (a 503), and nothing
  cancels the caller's task. Regression: the request once ran eagerly in the
  caller's task while an `asyncio.timeout` inside it belonged to another task, so
  the timeout cancelled the HTTP handler and the client's connection was dropped.
- A leader that is replaced while a write waits on it: NotAvailable at once
  (through `Transport.give_up_requests`), with real transports on loopback; a
  change of role that keeps the leader leaves the request waiting for its answer.
"""

from __future__ import annotations

import asyncio

import pytest

from changeagent.change import NewChange
from changeagent.node.errors import CommitTimeout, NotAvailable
from changeagent.node.leader_link import LeaderLink
from changeagent.transport import ProposalReply, RequestContext, RequestFailed
from changeagent.transport.transport import Reply, Request
from tests.transport.harness import Node, run, stop_all

LEADER = 2
CHANGE = NewChange(type=0, tags=(), data_json=b"{}")


class SilentLeader:
    """The transport's side of a leader that never answers: the request times out
    inside, with `asyncio.timeout`."""

    async def propose(self, *arguments: object, timeout_s: float, **options: object) -> int:
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.Event().wait()
        except TimeoutError:
            raise RequestFailed("timeout", f"no answer within {timeout_s}s") from None
        raise AssertionError("unreachable")


def test_a_leader_that_never_answers_gives_commit_timeout_not_a_cancelled_caller() -> None:
    async def scenario() -> None:
        link = LeaderLink(lambda: LEADER, lambda: True)
        link.transport = SilentLeader()  # type: ignore[assignment]
        with pytest.raises(CommitTimeout):
            await link.forward_change(CHANGE, "", timeout_s=0.05)
        current = asyncio.current_task()
        assert current is not None and not current.cancelling()
        await asyncio.sleep(0.01)  # still running: nothing cancelled this task

    asyncio.run(scenario())


def test_a_forwarded_write_fails_at_once_when_its_leader_is_replaced() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        asked = asyncio.Event()
        release = asyncio.Event()

        async def slow_leader(context: RequestContext, request: Request) -> Reply:
            asked.set()
            await release.wait()
            return ProposalReply(request.request_id, index=7)

        follower = await Node(1, "tcp", addresses).start()
        leader = await Node(LEADER, "tcp", addresses, on_request=slow_leader).start()
        try:
            current = [LEADER]
            link = LeaderLink(lambda: current[0], lambda: True)
            link.transport = follower.transport
            loop = asyncio.get_running_loop()

            # Same leader after a change of role: the write still gets its answer.
            kept = asyncio.create_task(link.forward_change(CHANGE, "", timeout_s=20))
            await asyncio.wait_for(asked.wait(), 10)
            link.leadership_changed()
            release.set()
            assert await asyncio.wait_for(kept, 10) == 7

            # Another leader: the write waiting on the old one fails now, not in 20 s.
            release.clear()
            asked.clear()
            waiting = asyncio.create_task(link.forward_change(CHANGE, "k", timeout_s=20))
            await asyncio.wait_for(asked.wait(), 10)
            started = loop.time()
            current[0] = 3
            link.leadership_changed()
            with pytest.raises(NotAvailable, match="leader changed") as failed:
                await asyncio.wait_for(waiting, 10)
            assert failed.value.retry_after_s == 1
            assert loop.time() - started < 5
            release.set()  # the old leader's late answer is dropped
        finally:
            await stop_all([follower, leader])

    run(scenario())
