"""Per-peer state without I/O: the bounded send queue, reconnect backoff, stats."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PeerStats:
    """A snapshot of one peer link, for diagnostics."""

    peer_id: int
    connected: bool
    address: str  # of the current connection, "" when none
    messages_sent: int  # Raft messages handed to the socket
    messages_received: int  # Raft messages delivered to `on_message`
    messages_dropped: int  # Raft messages dropped (queue full or lost with a connection)
    requests_failed: int  # proposals, read indexes and calls failed by the transport
    reconnects: int  # connections established after the first one
    queue_messages: int
    queue_bytes: int
    last_error: str


@dataclass(slots=True)
class Outgoing:
    """One encoded frame waiting in a send queue.

    `request_id` is set (non-zero) for requests (proposals, read indexes, RPCs):
    they are never dropped to make room; they are refused when they do not fit.
    Raft messages (`request_id` 0) are dropped oldest first, and when they waited
    too long (`queued_s`: when queued, on the monotonic clock).
    """

    body: bytes
    request_id: int = 0
    queued_s: float = 0.0

    @property
    def droppable(self) -> bool:
        return self.request_id == 0


class SendQueue:
    """Bounded FIFO of frames for one peer; drops the oldest Raft messages when full.

    Invariant: `len(self) <= messages_max` and `self.bytes <= bytes_max`.
    """

    def __init__(self, messages_max: int, bytes_max: int) -> None:
        self._messages_max = messages_max
        self._bytes_max = bytes_max
        self._items: deque[Outgoing] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: Outgoing) -> tuple[bool, int]:
        """Queue `item`, dropping the oldest Raft messages to make room.

        Returns (queued, dropped Raft messages). A Raft message that does not fit
        even in an empty queue of droppables is itself dropped; a request that
        does not fit is refused (queued is False) and nothing is dropped for it.
        """
        if len(item.body) > self._bytes_max:
            return False, 1 if item.droppable else 0
        victims = self._victims(len(item.body))
        if victims is None:
            return False, 1 if item.droppable else 0
        for victim in victims:
            self._items.remove(victim)
            self.bytes -= len(victim.body)
        self._items.append(item)
        self.bytes += len(item.body)
        return True, len(victims)

    def _victims(self, size: int) -> list[Outgoing] | None:
        """The oldest Raft messages whose removal makes room for `size` bytes."""
        count, total = len(self._items), self.bytes
        victims: list[Outgoing] = []
        for queued in self._items:
            if count < self._messages_max and total + size <= self._bytes_max:
                break
            if queued.droppable:
                victims.append(queued)
                count -= 1
                total -= len(queued.body)
        if count < self._messages_max and total + size <= self._bytes_max:
            return victims
        return None

    def pop_batch(self, bytes_max: int, stale_before_s: float = 0.0) -> tuple[list[Outgoing], int]:
        """The oldest items up to `bytes_max` bytes (at least one if any is left),
        and how many Raft messages queued before `stale_before_s` were dropped on
        the way instead: a message that waited that long for a connection (a
        peer down, restarting) is superseded — the leader's next heartbeat, a
        new election — and delivered late it misleads (a restarted node takes a
        deposed leader's old APPEND for a live leader and refuses votes for an
        election timeout). Requests are never dropped: their callers time out."""
        batch: list[Outgoing] = []
        size = stale = 0
        items = self._items
        while items and (not batch or size + len(items[0].body) <= bytes_max):
            item = items.popleft()
            self.bytes -= len(item.body)
            if item.request_id == 0 and item.queued_s < stale_before_s:
                stale += 1
                continue
            size += len(item.body)
            batch.append(item)
        return batch, stale

    def drain(self) -> list[Outgoing]:
        items = list(self._items)
        self._items.clear()
        self.bytes = 0
        return items


class Backoff:
    """Exponential reconnect delays with jitter: delay d is drawn from [d/2, d]."""

    def __init__(self, s_min: float, s_max: float, rng: random.Random) -> None:
        self._s_min = s_min
        self._s_max = s_max
        self._rng = rng
        self._attempts = 0

    def next_delay_s(self) -> float:
        delay: float = min(self._s_max, self._s_min * 2.0 ** min(self._attempts, 32))
        self._attempts += 1
        return delay / 2 + self._rng.uniform(0, delay / 2)

    def reset(self) -> None:
        self._attempts = 0


@dataclass(slots=True)
class LinkCounters:
    messages_sent: int = 0
    messages_received: int = 0
    messages_dropped: int = 0
    requests_failed: int = 0
    connections: int = 0
    last_error: str = ""
