"""A deterministic event queue keyed by simulated time.

Events that fall at the same time run in the order they were scheduled (a
sequence number breaks ties), so the order never depends on hashing, object
identity or the wall clock. Every queue has a limit: `push` raises once
`events_max` events are pending, which turns a message storm into a failure
instead of a hang.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Generic, TypeVar

EventT = TypeVar("EventT")


class SchedulerOverflow(Exception):
    """More events are pending than the configured limit allows."""


@dataclass(slots=True)
class Scheduler(Generic[EventT]):
    """Min-heap of (time, sequence, event). Invariant: `now` never decreases."""

    events_max: int = 100_000
    now: int = 0
    _sequence: int = 0
    _heap: list[tuple[int, int, EventT]] = field(default_factory=list)

    def push(self, delay: int, event: EventT) -> None:
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        if len(self._heap) >= self.events_max:
            raise SchedulerOverflow(f"more than {self.events_max} pending events")
        self._sequence += 1
        heapq.heappush(self._heap, (self.now + delay, self._sequence, event))

    def pop(self) -> EventT | None:
        """The next event, advancing `now` to its time; None when the queue is empty."""
        if not self._heap:
            return None
        time, _, event = heapq.heappop(self._heap)
        self.now = time
        return event

    def __len__(self) -> int:
        return len(self._heap)

    def drain(self, keep: tuple[type, ...]) -> None:
        """Drop every pending event that is not an instance of `keep`."""
        self._heap = [item for item in self._heap if isinstance(item[2], keep)]
        heapq.heapify(self._heap)
