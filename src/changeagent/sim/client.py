"""The simulated client: unique proposals, retried until some node applies them.

Every payload is unique (`c<number>`), so an applied entry names the proposal it
came from. A proposal is *acknowledged* the first time any node applies it: that
is the earliest moment a real node could answer the client, which makes the
ReadIndex freshness check as strict as possible. Raft never says that an entry
was lost (it is silently overwritten), so, like a real client with an
idempotency key, this one re-proposes whatever is not acknowledged after a
timeout; a retried payload may then be applied twice, at two indices, which is
allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class PendingProposal:
    payload: bytes
    proposed_at: int | None = None  # simulated time of the last attempt; None if never
    index: int = 0  # index returned by the last successful propose(); 0 if none


@dataclass(slots=True)
class Client:
    """Invariant: every payload in `pending` has never been applied by any node."""

    retry_after: int  # simulated time units before an unacknowledged proposal is retried
    pending: dict[bytes, PendingProposal] = field(default_factory=dict)
    acknowledged: int = 0
    proposed: int = 0
    _next_payload: int = 0

    def new_payload(self) -> PendingProposal:
        self._next_payload += 1
        payload = f"c{self._next_payload}".encode()
        proposal = PendingProposal(payload)
        self.pending[payload] = proposal
        return proposal

    def due(self, now: int) -> list[PendingProposal]:
        """Pending proposals never sent, or sent longer ago than `retry_after`, oldest first."""
        return [
            proposal
            for proposal in self.pending.values()
            if proposal.proposed_at is None or now - proposal.proposed_at >= self.retry_after
        ]

    def record_attempt(self, proposal: PendingProposal, now: int, index: int) -> None:
        proposal.proposed_at = now
        proposal.index = index
        self.proposed += 1

    def acknowledge(self, payload: bytes) -> bool:
        """Called when any node applies `payload`; True the first time."""
        if self.pending.pop(payload, None) is None:
            return False
        self.acknowledged += 1
        return True
