"""Per-node limits, and the limits of the core and the transport derived from them.

One rule keeps them consistent: a body the API accepts always fits in an entry,
an entry always fits in one APPEND, and an APPEND (or a forwarded write) always
fits in one transport frame, also when `--max-body-bytes` is raised. A change
whose stored form can never fit is refused with 413 before it is proposed.
"""

from __future__ import annotations

from dataclasses import dataclass

from changeagent.raft import RaftConfig
from changeagent.transport import TransportConfig
from changeagent.transport.codec import FRAME_BYTES_MAX_DEFAULT

# Room for `_id` and `_ts` around a change: a compact body of body_bytes_max fits.
ENTRY_OVERHEAD_BYTES = 1024
# Room in a frame for the message envelope and each entry's index, term, type and key.
FRAME_ENVELOPE_BYTES = 64 * 1024
ENTRY_ENVELOPE_BYTES = 64
RAFT_MESSAGE_ENTRIES_MAX = 1024
# The core's defaults for these two; raised with the entry size when needed.
UNCOMMITTED_BYTES_MAX = 64 << 20
APPLY_BYTES_MAX = 64 << 20
TRANSPORT_QUEUE_BYTES_MAX = 64 << 20


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """Per-node limits (not replicated). Validated by the CLI before the node starts."""

    limit_default: int = 100
    limit_max: int = 10_000
    block_max_s: float = 600.0
    body_bytes_max: int = 1024 * 1024
    idempotency_key_bytes_max: int = 256
    pending_proposals_max: int = 100_000
    commit_timeout_s: float = 30.0
    purge_interval_s: float = 1.0
    # At most this many log entries removed by one purge: the compaction holds the
    # writer thread, and so every write of the node, ~0.2 s per 100,000 entries;
    # a larger backlog goes in steps, one per purge check.
    purge_entries_max: int = 100_000
    # A joining node is seeded with the leader's committed log as a file (`seeding.py`)
    # when the leader holds at least this many entries; 0: never.
    seed_entries_min: int = 10_000

    @property
    def entry_bytes_max(self) -> int:
        """The largest stored change: any body of at most `body_bytes_max` fits."""
        return self.body_bytes_max + ENTRY_OVERHEAD_BYTES

    @property
    def frame_bytes_max(self) -> int:
        """The largest peer frame: a full APPEND or a forwarded write of any size allowed."""
        keys_bytes = RAFT_MESSAGE_ENTRIES_MAX * (
            self.idempotency_key_bytes_max + ENTRY_ENVELOPE_BYTES
        )
        needed = self.entry_bytes_max + keys_bytes + FRAME_ENVELOPE_BYTES
        return max(FRAME_BYTES_MAX_DEFAULT, needed)

    def raft_config(self, node_id: int, election_ticks: int, heartbeat_ticks: int) -> RaftConfig:
        entry_bytes_max = self.entry_bytes_max
        return RaftConfig(
            node_id=node_id,
            election_ticks=election_ticks,
            heartbeat_ticks=heartbeat_ticks,
            max_message_bytes=entry_bytes_max,
            max_message_entries=RAFT_MESSAGE_ENTRIES_MAX,
            max_uncommitted_bytes=max(UNCOMMITTED_BYTES_MAX, 4 * entry_bytes_max),
            max_apply_bytes=max(APPLY_BYTES_MAX, entry_bytes_max),
        )

    def transport_config(self) -> TransportConfig:
        frame_bytes_max = self.frame_bytes_max
        return TransportConfig(
            frame_bytes_max=frame_bytes_max,
            queue_bytes_max=max(TRANSPORT_QUEUE_BYTES_MAX, 4 * frame_bytes_max),
        )
