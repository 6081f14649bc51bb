"""Supervisor: every long-lived task of a node runs under it, and fails the node loudly.

A task that raises (the Ready loop, the ticker, purge, promotion, leaving the
cluster) or a callback that raises while handling a peer's message is never a
silent dead task: the supervisor calls the node's fail-stop once, naming the
task, and logs the error once (with its traceback unless it is a storage or OS
error, whose message says it all). The node then stops Raft, so a leader that
can no longer write is replaced by another member, answers writes 503 with the
reason, and `/health` names it.

Operating errors that a task can handle (a peer gone, a request refused) are
handled inside the task; only what escapes it reaches the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from changeagent.storage import StorageFailed

log = logging.getLogger(__name__)
T = TypeVar("T")

OnFailure = Callable[[str], None]


class Supervisor:
    """Owns tasks; the first unexpected exception calls `on_failure(reason)`."""

    def __init__(self, on_failure: OnFailure) -> None:
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the node's, once it runs
        self._loop_thread = 0
        self.failure: str | None = None

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run `coroutine` as a supervised task."""
        loop = asyncio.get_running_loop()
        self._loop, self._loop_thread = loop, threading.get_ident()
        task = loop.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def fail(self, where: str, error: BaseException) -> None:
        """Report `error` from `where` as the node's failure (only the first counts).
        Safe from any thread (a read in a worker thread may find corruption)."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self.fail, where, error)
            return
        reason = f"{where} failed: {_describe(error)}"
        if self.failure is None:
            self.failure = reason
            if isinstance(error, StorageFailed | OSError):
                log.error("node is failing stop: %s", reason)
            else:
                log.error("node is failing stop: %s", reason, exc_info=error)
        self._on_failure(reason)

    async def stop(self) -> None:
        """Cancel every task and wait for them (shutdown: not a failure)."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.fail(f"task {task.get_name()}", error)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else repr(error)
