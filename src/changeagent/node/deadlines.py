"""The timeouts of many waiting long-polls on one event-loop timer.

A timer per waiter (`loop.call_later`) costs each waiting request a timer handle,
libuv's timer, a copied context and an argument tuple (~0.5 KiB measured with
tracemalloc), and each wake-up a cancel: at 50,000 waiting consumers that is
25 MB and, for 1,000 consumers woken by one commit, 1,000 cancels and 1,000 new
timers when they come back. Here deadlines fall into buckets of RESOLUTION_S
(rounded up, so a waiter never expires early by more than the loop's own
millisecond granularity), a waiter costs one entry in its bucket's dict, and one
loop timer is armed for the earliest bucket. A removed waiter leaves at most a
stale bucket number in the heap, skipped when it comes up; the heap holds each
number once, so it is bounded by the longest timeout over RESOLUTION_S.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Item = TypeVar("Item", bound=Hashable)

RESOLUTION_S = 0.01  # a long-poll's block and a stream's heartbeat are seconds
# Timers may fire up to a millisecond early (uvloop keeps milliseconds): a bucket
# is due this close to its end.
EARLY_S = 0.001


class Deadlines(Generic[Item]):
    """Calls `expire(item)` once an item's deadline (loop time) has passed, unless
    it was removed first. Runs on one event loop."""

    def __init__(self, expire: Callable[[Item], None], resolution_s: float = RESOLUTION_S) -> None:
        self._expire = expire
        self._resolution_s = resolution_s
        self._buckets: dict[int, dict[Item, None]] = {}  # bucket number -> its items
        self._numbers: list[int] = []  # heap of bucket numbers, each at most once
        self._queued: set[int] = set()  # the numbers in the heap
        self._timer: asyncio.TimerHandle | None = None
        self._timer_number: int | None = None

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, item: Item, deadline_s: float) -> int:
        """Expire `item` at loop time `deadline_s`; returns the key for `remove`."""
        number = math.ceil(deadline_s / self._resolution_s)
        bucket = self._buckets.get(number)
        if bucket is None:
            bucket = self._buckets[number] = {}
            if number not in self._queued:
                self._queued.add(number)
                heapq.heappush(self._numbers, number)
            if self._timer_number is None or number < self._timer_number:
                self._arm(number)
        bucket[item] = None
        return number

    def remove(self, item: Item, number: int) -> None:
        """Forget `item` (added with key `number`); nothing if it already expired."""
        bucket = self._buckets.get(number)
        if bucket is not None and bucket.pop(item, 0) is None and not bucket:
            del self._buckets[number]  # its number stays in the heap until it is due

    def close(self) -> None:
        """Expire nothing more."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_number = None
        self._buckets.clear()
        self._numbers.clear()
        self._queued.clear()

    def _arm(self, number: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(number * self._resolution_s, self._fire)
        self._timer_number = number

    def _fire(self) -> None:
        self._timer = self._timer_number = None
        due_s = asyncio.get_running_loop().time() + EARLY_S
        numbers = self._numbers
        while numbers and numbers[0] * self._resolution_s <= due_s:
            number = heapq.heappop(numbers)
            self._queued.discard(number)
            for item in self._buckets.pop(number, ()):
                self._expire(item)
        # Skip numbers whose buckets emptied (their waiters were woken), then wait
        # for the first that still holds one.
        while numbers and numbers[0] not in self._buckets:
            self._queued.discard(heapq.heappop(numbers))
        if numbers:
            self._arm(numbers[0])
