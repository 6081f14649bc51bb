"""Long-polls waiting for matching commits.

Waiters are grouped by their query (since, tags, type, limit): consumers at the
tail usually ask the same question, so one read — and one encoded response —
answers the whole group when a matching change commits. A group whose filter
matched nothing in a commit remembers how far it has checked, so the next commit
only scans the new entries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from changeagent.node.query import ChangeQuery, PageResult

ReadFunction = Callable[[ChangeQuery, int], PageResult]


@dataclass(slots=True)
class _Group:
    query: ChangeQuery
    future: asyncio.Future[PageResult | None]
    checked_upto: int
    waiting: int = 0
    done: bool = field(default=False)


class CommitWaiters:
    """Wakes long-polls whose query matches a newly committed change."""

    def __init__(self, read: ReadFunction) -> None:
        self._read = read  # read(query, upto) over committed entries, fast (hot tail)
        self._groups: dict[ChangeQuery, _Group] = {}
        self._closed = False

    def __len__(self) -> int:
        return sum(group.waiting for group in self._groups.values())

    async def wait(
        self, query: ChangeQuery, checked_upto: int, timeout_s: float
    ) -> PageResult | None:
        """Wait until a change matching `query` commits; None on timeout or close."""
        if self._closed:
            return None
        group = self._groups.get(query)
        if group is None:
            future: asyncio.Future[PageResult | None] = asyncio.get_running_loop().create_future()
            group = _Group(query=query, future=future, checked_upto=checked_upto)
            self._groups[query] = group
        group.waiting += 1
        try:
            done, _ = await asyncio.wait((group.future,), timeout=timeout_s)
            return group.future.result() if done else None
        finally:
            group.waiting -= 1
            if group.waiting == 0 and not group.done:
                del self._groups[query]

    def notify(self, commit_index: int) -> None:
        """Called on the event loop each time the commit index advances."""
        for query, group in list(self._groups.items()):
            if group.checked_upto >= commit_index:
                continue
            page = self._matching_page(group, commit_index)
            if page is None:
                group.checked_upto = commit_index
                continue
            group.done = True
            del self._groups[query]
            group.future.set_result(page)

    def close(self) -> None:
        """Answer every waiter now (shutdown): each then returns what it has."""
        self._closed = True
        for group in self._groups.values():
            group.done = True
            if not group.future.done():
                group.future.set_result(None)
        self._groups.clear()

    def _matching_page(self, group: _Group, commit_index: int) -> PageResult | None:
        query = group.query
        if group.checked_upto > query.since:
            # Cheap probe over the new entries only; most tag-filtered groups stop here.
            probe = self._read(query.with_since(group.checked_upto, limit=1), commit_index)
            if not probe.bodies:
                return None
        page = self._read(query, commit_index)
        return page if page.bodies else None
