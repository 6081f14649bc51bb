"""Waiting for a future with a deadline, on one loop timer.

`asyncio.timeout` (around `asyncio.shield` for a shared future) does this too, but
per call it builds a Timeout (the current task, a reschedule, an `uncancel` on
exit) and a shield's outer future with two callbacks: ~7 % of the event loop under
64 writers, for every write's commit wait (docs/BENCHMARKS.md, issue 15).

- `wait_owned`: a future only the caller waits for (a request's reply, an applied
  index): the deadline fails that future itself with the caller's error.
- `wait_shielded`: a future others share (a proposal): the deadline fails only this
  wait; the future goes on.
- `TimeoutGroup.wait`: the same as `wait_shielded` for many waits that all last
  one length (every write's commit wait): one timer for all of them.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_owned(
    future: asyncio.Future[T], timeout_s: float, on_timeout: Callable[[], BaseException]
) -> T:
    """`future`'s result; after `timeout_s` seconds it fails with `on_timeout()`."""
    timer = asyncio.get_running_loop().call_later(timeout_s, _fail, future, on_timeout)
    try:
        return await future
    finally:
        timer.cancel()


def _fail(future: asyncio.Future[T], on_timeout: Callable[[], BaseException]) -> None:
    if not future.done():
        future.set_exception(on_timeout())


async def wait_shielded(
    future: asyncio.Future[T], timeout_s: float, on_timeout: Callable[[], BaseException]
) -> T:
    """`future`'s result, or `on_timeout()` raised after `timeout_s` seconds.

    Neither the timeout nor a cancellation of the caller touches `future`: it goes
    on, and a later exception of it is marked retrieved (nobody is left to see it).
    """
    if future.done():
        return future.result()
    waiter = _shielded_waiter(future)

    def expire() -> None:
        if not waiter.done():
            waiter.set_exception(on_timeout())

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        return await waiter
    finally:
        timer.cancel()


def _shielded_waiter(future: asyncio.Future[T]) -> asyncio.Future[T]:
    """A new future settled like `future` when it settles, unless settled first."""
    waiter: asyncio.Future[T] = future.get_loop().create_future()

    def settle(done: asyncio.Future[T]) -> None:
        if waiter.done():
            if not done.cancelled():
                done.exception()  # retrieved: the caller is gone
            return
        if done.cancelled():
            waiter.cancel()
        elif (error := done.exception()) is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    future.add_done_callback(settle)
    return waiter


# A loop timer may fire up to a millisecond early (uvloop keeps milliseconds).
EARLY_S = 0.001


class TimeoutGroup:
    """`wait_shielded` for waits that all last `timeout_s`, on one loop timer.

    A timer per wait (`call_later`, then `cancel`) costs ~1.3 µs on uvloop for
    every write's commit wait: ~2 % of a standalone node's writes/s at 16 clients
    (docs/BENCHMARKS.md, issue 15). Waits of one length expire in the order they
    began, so the waits in an insertion-ordered map are in deadline order too:
    one timer, armed for the oldest, does. A wait leaves the map as it ends; the
    timer, armed for a wait that ended since, fires, expires what is due and is
    armed again for the oldest wait left (about once per `timeout_s` under a
    steady load). Serves one event loop at a time: the one its first wait ran on,
    or a later one once no wait is left on the first.

    Not `node.deadlines.Deadlines`, the long-polls' shared timer: that one takes
    deadlines of any length (buckets and a heap); waits of one length need neither.
    """

    def __init__(self, timeout_s: float, on_timeout: Callable[[], BaseException]) -> None:
        if not timeout_s > 0:
            raise ValueError(f"the timeout must be positive, not {timeout_s!r}")
        self.timeout_s = timeout_s
        self._on_timeout = on_timeout
        self._waits: OrderedDict[asyncio.Future[Any], float] = OrderedDict()  # -> deadline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._waits)

    async def wait(self, future: asyncio.Future[T]) -> T:
        """`future`'s result, or `on_timeout()` raised after `timeout_s` seconds;
        neither touches `future` (see `wait_shielded`)."""
        if future.done():
            return future.result()
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        waiter = _shielded_waiter(future)
        self._waits[waiter] = loop.time() + self.timeout_s
        if self._timer is None:
            self._arm()
        try:
            return await waiter
        finally:
            self._waits.pop(waiter, None)

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._waits:
            raise RuntimeError("waits of this group are still pending on another event loop")
        if self._timer is not None and self._loop is not None and not self._loop.is_closed():
            self._timer.cancel()
        self._timer = None
        self._loop = loop

    def _arm(self) -> None:
        assert self._loop is not None
        oldest_deadline = next(iter(self._waits.values()))
        self._timer = self._loop.call_at(oldest_deadline, self._expire_due)

    def _expire_due(self) -> None:
        self._timer = None
        assert self._loop is not None
        now = self._loop.time() + EARLY_S
        waits = self._waits
        while waits:
            waiter, deadline = next(iter(waits.items()))
            if deadline > now:
                self._arm()
                return
            del waits[waiter]
            if not waiter.done():
                waiter.set_exception(self._on_timeout())
