"""The index this node has applied (what its reads show), and waits for it.

A follower answers a forwarded write once it has applied the leader's index
too; a linearizable read waits for the read index; a membership change waits
for its entry. Every wait has a deadline, and all of them end at once when the
node stops applying (failure or shutdown).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from changeagent.node.errors import CommitTimeout, NotAvailable


class AppliedIndex:
    """Invariant: `index` never decreases; every waiter's index is above it."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._refusal: str | None = None  # set once the node stops applying

    def advance(self, index: int) -> None:
        """Entries up to `index` are applied: wake whoever waited for them."""
        self.index = max(self.index, index)
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.index:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    def reset(self, index: int) -> None:
        """A new Raft core starts at `index` (join: from nothing; leave: one further)."""
        self.index = index

    async def wait(self, index: int, timeout_s: float) -> None:
        """Until `index` is applied; CommitTimeout after `timeout_s`, NotAvailable
        when the node stops applying."""
        if self.index >= index:
            return
        if self._refusal is not None:
            raise NotAvailable(self._refusal, retry_after_s=1)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (index, next(self._order), future))
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            raise CommitTimeout(
                f"this node has not applied entry {index} yet; it is committed on the leader"
            ) from None

    def refuse(self, reason: str) -> None:
        """The node stopped applying: end every wait now, refuse new ones."""
        self._refusal = self._refusal or reason
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(NotAvailable(reason, retry_after_s=1))
                future.exception()  # marked retrieved: its waiter may be gone
