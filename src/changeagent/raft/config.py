"""The core's configuration: every limit in one validated, frozen record."""

from __future__ import annotations

from dataclasses import dataclass

from changeagent.raft.errors import ConfigError

__all__ = ["ConfigError", "RaftConfig"]


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tunables of one Raft core. Call `validate()` before building a node.

    Times are in ticks: the node layer decides how long a tick is.
    """

    node_id: int
    # A follower campaigns after a random timeout in [election_ticks, 2 * election_ticks).
    election_ticks: int = 10
    # The leader sends heartbeats every heartbeat_ticks; must be < election_ticks.
    heartbeat_ticks: int = 1
    # Upper bound on the data bytes of one APPEND (a single larger entry is refused
    # at proposal time, so every entry fits in a message).
    max_message_bytes: int = 1 << 20
    max_message_entries: int = 1024
    # APPEND messages in flight per follower in the replicate state.
    max_inflight_messages: int = 64
    # Data bytes the leader accepts beyond its commit index before dropping proposals.
    max_uncommitted_bytes: int = 64 << 20
    # Data bytes of committed entries handed out in one Ready.
    max_apply_bytes: int = 64 << 20
    # ReadIndex requests waiting for confirmation (or for the first commit of a term).
    max_pending_reads: int = 4096
    pre_vote: bool = True
    check_quorum: bool = True

    def validate(self) -> None:
        """Raise `ConfigError` naming the first value that is out of range."""
        if self.node_id <= 0:
            raise ConfigError(f"node_id must be a positive integer, not {self.node_id}")
        if self.heartbeat_ticks < 1:
            raise ConfigError(f"heartbeat_ticks must be >= 1, not {self.heartbeat_ticks}")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError(
                f"election_ticks ({self.election_ticks}) must be greater than "
                f"heartbeat_ticks ({self.heartbeat_ticks})"
            )
        for name in (
            "max_message_bytes",
            "max_message_entries",
            "max_inflight_messages",
            "max_uncommitted_bytes",
            "max_apply_bytes",
            "max_pending_reads",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        if self.max_uncommitted_bytes < self.max_message_bytes:
            raise ConfigError("max_uncommitted_bytes must be >= max_message_bytes")
        if self.max_apply_bytes < self.max_message_bytes:
            raise ConfigError("max_apply_bytes must be >= max_message_bytes")
