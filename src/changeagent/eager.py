"""Starting a coroutine in the call that creates it, as Python 3.12's eager tasks do.

On Python 3.11 every `create_task` first runs a coroutine one loop iteration
later. Where the first steps of a coroutine are what matters (writing a frame
hands it to the socket before its first await), `start_now` runs it at once, up to
its first suspension, and hands only the rest to a task.

Only for coroutines that do not depend on which task runs them before that first
suspension: unlike 3.12's eager tasks, the eager part runs in the *caller's* task,
so an `asyncio.timeout` entered there would cancel the caller (a forwarded write
run this way once lost its HTTP connection when its leader never answered).
Writing frames qualifies: the socket takes the bytes, then at most a drain waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any


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


class _Resumed:
    """Continues a coroutine that was run up to a suspension: the future it
    suspended on is handed to the task, and the task's results back to it."""

    def __init__(self, coroutine: Coroutine[Any, Any, None], suspended_on: Any) -> None:
        self._coroutine = coroutine
        self._suspended_on = suspended_on

    async def run(self) -> None:
        await self

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, waiting = self._coroutine, self._suspended_on
        while True:
            try:
                sent = yield waiting
            except BaseException as error:  # cancelled, or the awaited future failed
                try:
                    waiting = coroutine.throw(error)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coroutine.send(sent)
                except StopIteration:
                    return
