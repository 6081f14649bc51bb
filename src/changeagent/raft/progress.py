"""The leader's view of one follower's log (etcd's Progress), with its in-flight window."""

from __future__ import annotations

from collections import deque

from changeagent.raft.ready import PeerProgress, ProgressState


class Progress:
    """Replication state for one peer. Invariant: 0 <= match < next.

    In PROBE the leader sends one APPEND and waits (`probe_sent`) for an answer or
    a heartbeat response; in REPLICATE it streams optimistically, bounded by the
    in-flight window (`inflight` holds the last index of each unacknowledged
    APPEND); in SNAPSHOT it waits until the follower reports `pending_snapshot`
    (the SNAPSHOT was sent on the leader's tick `snapshot_sent_tick`).
    """

    __slots__ = (
        "inflight",
        "learner",
        "match",
        "next",
        "pending_snapshot",
        "previous_active",
        "probe_sent",
        "read_round",
        "recent_active",
        "snapshot_sent_tick",
        "state",
    )

    def __init__(self, next_index: int, *, learner: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.pending_snapshot = 0
        self.snapshot_sent_tick = 0
        # Set by any response; cleared by the leader's check-quorum sweep.
        self.recent_active = False
        # `recent_active` as the previous sweep found it: with it, a peer heard
        # from within the last one or two election timeouts counts as reachable
        # even just after a sweep cleared `recent_active`.
        self.previous_active = False
        # Highest ReadIndex round this peer has echoed in a heartbeat response.
        self.read_round = 0
        self.learner = learner

    def become_probe(self) -> None:
        # After a snapshot, resume just past it; otherwise just past the known match.
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_snapshot(self, snapshot_index: int, tick: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_sent_tick = tick
        self.probe_sent = False
        self.inflight.clear()

    def is_paused(self, max_inflight: int) -> bool:
        state = self.state
        if state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        if state is ProgressState.PROBE:
            return self.probe_sent
        return True

    def sent_entries(self, last_index: int) -> None:
        """Record an APPEND carrying entries up to `last_index`."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The peer acknowledged `index`; return whether `match` moved forward."""
        updated = False
        if self.match < index:
            self.match = index
            self.probe_sent = False
            updated = True
        if self.next <= index:
            self.next = index + 1
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The peer rejected the APPEND at `rejected`; move `next` back using the
        hint. Return False when the rejection is stale (already superseded)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def reachable(self) -> bool:
        """Whether the peer answered within the last one or two election timeouts."""
        return self.recent_active or self.previous_active

    def view(self) -> PeerProgress:
        return PeerProgress(
            match=self.match,
            next=self.next,
            state=self.state,
            recent_active=self.recent_active,
            inflight_messages=len(self.inflight),
            learner=self.learner,
            reachable=self.reachable(),
        )
