"""ReadIndex bookkeeping on the leader (§6.4), without leases.

A read is answered with the commit index at the time of the request, once a
majority of voters has echoed a heartbeat round sent after the request: that
proves no newer leader existed when the read arrived. Rounds are numbered;
one echo of round r confirms every read of round <= r. Before the leader has
committed an entry of its own term, its commit index may be stale, so reads
wait in `waiting` until then.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class PendingRead(NamedTuple):
    read_round: int  # heartbeat round that confirms it
    commit_index: int  # the leader's commit index when the request arrived
    context: bytes
    requester: int  # node id to answer (the leader itself for local reads)


class ReadIndexQueue:
    """Reads waiting for confirmation, bounded by `limit` each."""

    __slots__ = ("limit", "pending", "round", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.round = 0
        self.pending: deque[PendingRead] = deque()
        self.waiting: list[tuple[bytes, int]] = []

    def wait(self, context: bytes, requester: int) -> bool:
        """Park a read until the term's first commit; False when full."""
        if len(self.waiting) >= self.limit:
            return False
        self.waiting.append((context, requester))
        return True

    def take_waiting(self) -> list[tuple[bytes, int]]:
        waiting, self.waiting = self.waiting, []
        return waiting

    def add(self, commit_index: int, context: bytes, requester: int) -> bool:
        """Queue a read for the next round; False when full."""
        if len(self.pending) >= self.limit:
            return False
        self.round += 1
        self.pending.append(PendingRead(self.round, commit_index, context, requester))
        return True

    def confirmed(self, echoed_rounds: list[int], quorum: int) -> list[PendingRead]:
        """Pop the reads whose round at least `quorum` voters have echoed."""
        released: list[PendingRead] = []
        pending = self.pending
        while pending:
            read_round = pending[0].read_round
            if sum(1 for echoed in echoed_rounds if echoed >= read_round) < quorum:
                break
            released.append(pending.popleft())
        return released

    def clear(self) -> None:
        self.pending.clear()
        self.waiting.clear()
