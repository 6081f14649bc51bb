"""RuntimeCounters: monotonic counts of what this node's runtime did.

Plain integers that the runtime around the Raft core (the driver, the replica)
increments where things happen; `changeagent.metrics` reads a copy at scrape
time. Incrementing an attribute is the whole cost on the write path, and the
core stays free of any metrics code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RuntimeCounters:
    # Times this node saw a new leader (itself included); the first one counts too.
    leader_changes: int = 0
    # Proposals made on this node (as leader) that were applied with their own term.
    proposals_committed: int = 0
    # Proposals refused or lost before they committed (leadership changed, overload,
    # too large, fail-stop); a write that only timed out may still commit: not counted.
    proposals_failed: int = 0
    # Proposals handled in the call that made them (a lone writer's, `_propose_now`),
    # not batched by the Ready loop; of every proposal made here, that share.
    proposals_at_once: int = 0
    # Log entries removed from this node's storage by purges (compaction).
    purged_entries: int = 0
    # Joining nodes this node (as leader) sent its committed log to as a file.
    seeds_sent: int = 0
    # Log entries this node took in a seed when it joined (`seeding.py`).
    seeded_entries: int = 0
