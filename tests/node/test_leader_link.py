"""LeaderLink: a forwarded write whose leader never answers ends in CommitTimeout
for the caller (a 503), and the request's own timeout cancels only the request.

Regression: the request was once run eagerly in the caller's task, so the
`asyncio.timeout` inside the transport's request captured the caller's task and
cancelled the HTTP handler: the client's connection was dropped instead of answered."""

from __future__ import annotations

import asyncio

import pytest

from changeagent.change import NewChange
from changeagent.node.errors import CommitTimeout
from changeagent.node.leader_link import LeaderLink
from changeagent.transport import RequestFailed

LEADER = 2


class SilentLeader:
    """The transport's side of a leader that never answers: the request times out
    inside, with `asyncio.timeout`, as `Transport._await_reply` does."""

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
        change = NewChange(type=0, tags=(), data_json=b"{}")
        with pytest.raises(CommitTimeout):
            await link.forward_change(change, "", timeout_s=0.05)
        current = asyncio.current_task()
        assert current is not None and not current.cancelling()
        await asyncio.sleep(0.01)  # still running: nothing cancelled this task

    asyncio.run(scenario())
