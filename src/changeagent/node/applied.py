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
import logging
from collections.abc import Callable

from changeagent.node.errors import CommitTimeout, NotAvailable
from changeagent.timed import wait_owned

log = logging.getLogger(__name__)

OnReached = Callable[[], None]


class AppliedIndex:
    """Invariant: `index` never decreases; every waiter's index is above it."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._watches: list[tuple[int, int, OnReached]] = []  # hooks nobody awaits
        self._order = itertools.count()
        self._refusal: str | None = None  # set once the node stops applying

    def advance(self, index: int) -> None:
        """Entries up to `index` are applied: wake whoever waited for them."""
        self.index = max(self.index, index)
        watches = self._watches
        while watches and watches[0][0] <= self.index:  # hooks first: before any waiter resumes
            _call_on_reached(heapq.heappop(watches)[2])
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.index:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    def reset(self, index: int) -> None:
        """A new Raft core starts at `index` (join: from nothing; leave: one further).
        Watches end: their indexes belong to the history before."""
        self.index = index
        self._watches = []

    async def wait(self, index: int, timeout_s: float) -> None:
        """Until `index` is applied; CommitTimeout after `timeout_s`, NotAvailable
        when the node stops applying."""
        if self.index >= index:
            return
        if self._refusal is not None:
            raise NotAvailable(self._refusal, retry_after_s=1)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (index, next(self._order), future))
        # A waiter that timed out is done, so `advance` skips it.
        await wait_owned(future, timeout_s, lambda: _not_applied(index))

    def watch(self, index: int, on_reached: OnReached) -> None:
        """Call `on_reached()` once `index` is applied (inside `advance`, from the Ready
        loop's apply step, before any waiter resumes), at once if it is; never once
        the node stopped applying. For a hook that must be in place
        before the apply that may follow right away: a forwarded write's answer,
        registered as the leader's reply is read, the commit notice right behind it
        (`ChangeLog.append_change`). The hook must cope with a late call (the
        answer's own writer may have given up: `WriteDelivery` writes nothing then)."""
        if self._refusal is not None:
            return
        if self.index >= index:
            _call_on_reached(on_reached)
            return
        heapq.heappush(self._watches, (index, next(self._order), on_reached))

    def refuse(self, reason: str) -> None:
        """The node stopped applying: end every wait now, refuse new ones."""
        self._refusal = self._refusal or reason
        self._watches = []
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(NotAvailable(reason, retry_after_s=1))
                future.exception()  # marked retrieved: its waiter may be gone


def _call_on_reached(on_reached: OnReached) -> None:
    try:
        on_reached()
    except Exception:  # the waiter still resumes and answers the usual way
        log.exception("an applied-index hook failed; the request answers normally")


def _not_applied(index: int) -> CommitTimeout:
    return CommitTimeout(
        f"this node has not applied entry {index} yet; it is committed on the leader"
    )
