"""The transport's limits and timings: one validated, frozen record."""

from __future__ import annotations

from dataclasses import dataclass, fields

from changeagent.transport.codec import FRAME_BYTES_MAX_DEFAULT


class TransportConfigError(ValueError):
    """A transport setting is out of range."""


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Tunables of one `Transport`. Call `validate()` before building one."""

    # Largest frame body accepted or sent; a larger inbound frame closes the connection.
    frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT
    # Per-peer send queue bounds; Raft messages beyond them drop oldest first.
    queue_messages_max: int = 4096
    queue_bytes_max: int = 64 * 1024 * 1024
    # A Raft message queued longer than this (the link was down) is dropped, not
    # sent late: Raft sends a newer one (a heartbeat, the next election). The
    # default election timeout; a node sets its own (`set_message_age_max`).
    message_age_max_s: float = 1.0
    # Bytes the writer hands to the socket in one go (at least one frame).
    batch_bytes_max: int = 1024 * 1024
    # Reconnect delays: exponential from min to max, each with jitter in [delay/2, delay].
    backoff_s_min: float = 0.05
    backoff_s_max: float = 2.0
    connect_timeout_s: float = 5.0
    # The CHALLENGE/HELLO exchange must finish within this (and so must a TLS handshake).
    handshake_timeout_s: float = 5.0
    # A connection that delivers nothing for this long is closed; writers send a
    # PING after keepalive_s of silence, so only dead or stuck peers time out.
    read_timeout_s: float = 15.0
    keepalive_s: float = 3.0
    inbound_connections_max: int = 64
    # Requests (proposals, read indexes, RPCs) one connection may have us working on.
    requests_in_flight_max: int = 1024

    def validate(self) -> None:
        """Raise `TransportConfigError` naming the first value that is out of range."""
        for setting in fields(self):
            value = getattr(self, setting.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise TransportConfigError(f"{setting.name} must be positive, not {value!r}")
        if self.frame_bytes_max > self.queue_bytes_max:
            raise TransportConfigError("queue_bytes_max must be >= frame_bytes_max")
        if self.backoff_s_min > self.backoff_s_max:
            raise TransportConfigError("backoff_s_min must be <= backoff_s_max")
        if self.keepalive_s >= self.read_timeout_s:
            raise TransportConfigError("keepalive_s must be < read_timeout_s")
