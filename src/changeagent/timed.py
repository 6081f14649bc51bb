"""Waiting for a future with a deadline, on one loop timer.

`asyncio.timeout` (around `asyncio.shield` for a shared future) does this too, but
per call it builds a Timeout (the current task, a reschedule, an `uncancel` on
exit) and a shield's outer future with two callbacks: ~7 % of the event loop under
64 writers, for every write's commit wait (docs/BENCHMARKS.md, issue 15).

- `wait_owned`: a future only the caller waits for (a request's reply, an applied
  index): the deadline fails that future itself with the caller's error.
- `wait_shielded`: a future others share (a proposal): the deadline fails only this
  wait; the future goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

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
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

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

    def expire() -> None:
        if not waiter.done():
            waiter.set_exception(on_timeout())

    future.add_done_callback(settle)
    timer = loop.call_later(timeout_s, expire)
    try:
        return await waiter
    finally:
        timer.cancel()
