"""Holding a transport's immediate writes to the end of a block: one write per
connection for every frame written in it.

A leader applies the writes forwarded by a follower in batches (with 16 writers
about five per Ready) and answers each from the apply step. Written one by one,
each answer is a system call on the leader and a wake-up and a read on the
follower; held, a batch's answers and the commit notice after them go in one write.

Only writes that go out at once are held (`Connection.send_now`: a frame written
on an idle connection); a held connection still counts as idle, so every frame for
it in the block joins the same write, in order, and nothing else can write to it
before the block ends (the block does not await).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol


class Releasable(Protocol):
    def release(self, bodies: list[bytes], on_failure: Callable[[], None]) -> None:
        """Write `bodies` now; a failure to write calls `on_failure`."""


class WriteHold:
    """One per transport: `holding()` opens a block; `take` keeps a write in it."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[Releasable, tuple[list[bytes], Callable[[], None]]] | None = None

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Hold the writes made in the block; write them as it ends, even when it
        raises. A block inside another is part of it."""
        if self._held is not None:
            yield
            return
        held: dict[Releasable, tuple[list[bytes], Callable[[], None]]] = {}
        self._held = held
        try:
            yield
        finally:
            self._held = None
            for connection, (bodies, on_failure) in held.items():
                connection.release(bodies, on_failure)

    def take(
        self, connection: Releasable, bodies: list[bytes], on_failure: Callable[[], None]
    ) -> bool:
        """Keep `bodies` for `connection` if a block is open; whether they were kept."""
        held = self._held
        if held is None:
            return False
        kept = held.get(connection)
        if kept is None:
            held[connection] = (list(bodies), on_failure)
        else:
            kept[0].extend(bodies)
        return True
