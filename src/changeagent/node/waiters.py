"""Long-polls waiting for matching commits.

Waiters are grouped by their query (since, tags, type, limit): consumers at the
tail usually ask the same question, so one read — and one encoded response —
answers the whole group when a matching change commits. A group whose filter
matched nothing in a commit remembers how far it has checked, so the next commit
only scans the new entries.

Waking is the hot path of fan-out (1,000 consumers woken by one commit), so each
waiter costs one future and one timer, and `notify` wakes it with one
`set_result`: no `asyncio.wait`, no shared future with a callback per waiter.

A waiter may also carry a *delivery hook* (`deliver_on_wake`): `notify` calls it
synchronously with the page, before any task resumes, so the API can write a
prebuilt HTTP response straight to the consumer's socket. The task still wakes
afterwards (to finish the request's bookkeeping); the hook's return value tells
it whether the answer is already out.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from changeagent.node.query import ChangeQuery, PageResult

log = logging.getLogger(__name__)

ReadFunction = Callable[[ChangeQuery, int], PageResult]
# Called on the event loop, inside `notify`, with the page that wakes the waiter.
# Returns True when it delivered the page itself. Must be quick and must not raise.
DeliveryHook = Callable[[PageResult], bool]

_delivery_hook: contextvars.ContextVar[DeliveryHook | None] = contextvars.ContextVar(
    "changeagent_delivery_hook", default=None
)


@contextlib.contextmanager
def deliver_on_wake(hook: DeliveryHook) -> Iterator[None]:
    """Within this block, a long-poll registered by the current task is delivered by
    `hook` the moment a matching commit wakes it (see the module docstring).

    A context variable carries the hook so that the node's `wait_changes` signature
    stays as it is; `CommitWaiters.wait(..., hook=...)` is the explicit form.
    """
    token = _delivery_hook.set(hook)
    try:
        yield
    finally:
        _delivery_hook.reset(token)


@dataclass(slots=True, eq=False)  # hashed by identity: a dict key in its group
class _Waiter:
    future: asyncio.Future[PageResult | None]
    hook: DeliveryHook | None


@dataclass(slots=True)
class _Group:
    query: ChangeQuery
    checked_upto: int
    # Insertion-ordered: consumers are woken first come, first served; O(1) removal.
    waiters: dict[_Waiter, None] = field(default_factory=dict)


class CommitWaiters:
    """Wakes long-polls whose query matches a newly committed change."""

    def __init__(self, read: ReadFunction) -> None:
        self._read = read  # read(query, upto) over committed entries, fast (hot tail)
        self._groups: dict[ChangeQuery, _Group] = {}
        self._closed = False
        self.delivered = 0  # pages written by delivery hooks (diagnostics, tests)

    def __len__(self) -> int:
        return sum(len(group.waiters) for group in self._groups.values())

    async def wait(
        self,
        query: ChangeQuery,
        checked_upto: int,
        timeout_s: float,
        hook: DeliveryHook | None = None,
    ) -> PageResult | None:
        """Wait until a change matching `query` commits; None on timeout or close.

        `hook` (default: the one set by `deliver_on_wake`, if any) is called by
        `notify` with the page before this coroutine resumes.
        """
        if self._closed:
            return None
        loop = asyncio.get_running_loop()
        group = self._groups.get(query)
        if group is None:
            group = _Group(query=query, checked_upto=checked_upto)
            self._groups[query] = group
        waiter = _Waiter(loop.create_future(), hook if hook is not None else _delivery_hook.get())
        group.waiters[waiter] = None
        timer = loop.call_later(timeout_s, _expire, waiter.future)
        try:
            return await waiter.future
        finally:
            timer.cancel()
            # Still registered after a timeout or a cancel; a woken group is gone.
            registered = group.waiters.pop(waiter, 0) is None
            if registered and not group.waiters and self._groups.get(query) is group:
                del self._groups[query]

    def notify(self, commit_index: int) -> None:
        """Called on the event loop each time the commit index advances."""
        woken: list[tuple[_Group, PageResult]] = []
        for query, group in list(self._groups.items()):
            if group.checked_upto >= commit_index:
                continue
            page = self._matching_page(group, commit_index)
            if page is None:
                group.checked_upto = commit_index
                continue
            del self._groups[query]
            woken.append((group, page))
        for group, page in woken:
            waiters, group.waiters = group.waiters, {}
            for waiter in waiters:
                if waiter.future.done():  # timed out or cancelled, not resumed yet
                    continue
                if waiter.hook is not None and self._deliver(waiter.hook, page):
                    self.delivered += 1
                waiter.future.set_result(page)

    def close(self) -> None:
        """Answer every waiter now (shutdown): each then returns what it has."""
        self._closed = True
        groups, self._groups = self._groups, {}
        for group in groups.values():
            waiters, group.waiters = group.waiters, {}
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_result(None)

    def _matching_page(self, group: _Group, commit_index: int) -> PageResult | None:
        query = group.query
        if group.checked_upto > query.since:
            # Cheap probe over the new entries only; most tag-filtered groups stop here.
            probe = self._read(query.with_since(group.checked_upto, limit=1), commit_index)
            if not probe.bodies:
                return None
        page = self._read(query, commit_index)
        return page if page.bodies else None

    @staticmethod
    def _deliver(hook: DeliveryHook, page: PageResult) -> bool:
        try:
            return hook(page)
        except Exception:  # a broken hook must not stop the other wake-ups
            log.exception("long-poll delivery hook failed; the request answers normally")
            return False


def _expire(future: asyncio.Future[PageResult | None]) -> None:
    if not future.done():
        future.set_result(None)
