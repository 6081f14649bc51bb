"""Starting a coroutine in the call that creates it, as Python 3.12's eager tasks do.

On Python 3.11 every `create_task` first runs a coroutine one loop iteration
later. Where the first steps of a coroutine are what matters (writing a frame
hands it to the socket before its first await; sending a forwarded write), the
helpers here run it at once, up to its first suspension, and hand only the rest
to a task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def start_now(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run `coroutine` in this call up to its first suspension: None when it
    finished, else a task that finishes it. Exceptions raised before the
    suspension propagate to the caller."""
    try:
        suspended_on = coroutine.send(None)
    except StopIteration:
        return None
    except BaseException:
        coroutine.close()
        raise
    return asyncio.ensure_future(_Resumed(coroutine, suspended_on).run())


def eager_future(coroutine: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Like `asyncio.ensure_future(coroutine)`, but the coroutine runs at once up to
    its first suspension; its outcome, then or later, is the future's."""
    try:
        suspended_on = coroutine.send(None)
    except StopIteration as stop:
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        done.set_result(stop.value)
        return done
    except BaseException as error:
        failed: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        failed.set_exception(error)
        return failed
    return asyncio.ensure_future(_Resumed[T](coroutine, suspended_on).run())


class _Resumed(Generic[T]):
    """Continues a coroutine that was run up to a suspension: the future it
    suspended on is handed to the task, and the task's results back to it."""

    def __init__(self, coroutine: Coroutine[Any, Any, T], suspended_on: Any) -> None:
        self._coroutine = coroutine
        self._suspended_on = suspended_on

    async def run(self) -> T:
        return await self

    def __await__(self) -> Generator[Any, Any, T]:
        coroutine, waiting = self._coroutine, self._suspended_on
        while True:
            try:
                sent = yield waiting
            except BaseException as error:  # cancelled, or the awaited future failed
                try:
                    waiting = coroutine.throw(error)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    waiting = coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
