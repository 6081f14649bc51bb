"""The frames that travel between nodes, besides Raft's own `Message`.

Frozen records, one per frame type. The codec validates every field when it
decodes, so a frame handed to `on_message` is always well formed; local code
building frames is trusted (a bad field is a programmer error and fails in the
encoder with `TypeError` or `ValueError`, not `FrameError`).

Request ids are chosen by the sender and echoed by the reply; the transport
does not interpret them except for `RpcRequest`, whose replies it routes back to
the waiting `Transport.call` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from changeagent.raft.messages import Message

PROTOCOL_VERSION = 1

# Error codes carried by replies (`error_code`, "" means success). The runtime
# may add its own; these are the ones the transport itself produces.
ERROR_NOT_LEADER = "not_leader"
ERROR_TIMEOUT = "timeout"
ERROR_QUEUE_FULL = "queue_full"
ERROR_DISCONNECTED = "disconnected"
ERROR_UNKNOWN_METHOD = "unknown_method"
ERROR_INTERNAL = "internal"

# The payload of an RPC: any plain msgpack value (maps keyed by strings).
RpcValue: TypeAlias = (
    bool | int | float | str | bytes | list["RpcValue"] | dict[str, "RpcValue"] | None
)


@dataclass(frozen=True, slots=True)
class Challenge:
    """Sent first by the accepting side: a fresh nonce the dialer must sign."""

    version: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Hello:
    """Identifies the sender and proves it holds the cluster secret.

    `cluster_id` 0 (with an empty `proof`) means the sender is not in a cluster
    yet: such a connection may carry only RPCs (see DESIGN.md, "Joining").
    `link` is True on a peer's persistent link and False on a one-shot call
    connection (`Transport.call_address`), which never replaces a link.
    """

    version: int
    cluster_id: int
    node_id: int
    nonce: bytes
    proof: bytes
    link: bool = True


@dataclass(frozen=True, slots=True)
class Proposal:
    """A write forwarded by a follower to the leader."""

    request_id: int
    entry_type: int
    data: bytes
    key: str = ""  # idempotency key, "" when none


@dataclass(frozen=True, slots=True)
class ProposalReply:
    """The leader's answer: the entry's `index`, or an error code and message."""

    request_id: int
    index: int = 0
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """A follower asks the leader for a linearizable read index."""

    request_id: int


@dataclass(frozen=True, slots=True)
class ReadIndexReply:
    """The confirmed read `index`, or an error code and message."""

    request_id: int
    index: int = 0
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class RpcRequest:
    """A generic request (`describe`, `join`, ...), answered on the same connection."""

    request_id: int
    method: str
    payload: RpcValue = None


@dataclass(frozen=True, slots=True)
class RpcResponse:
    """The answer to an `RpcRequest`: a payload, or an error code and message."""

    request_id: int
    payload: RpcValue = None
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True, slots=True)
class Ping:
    """Keeps an idle connection inside the peer's read timeout; never delivered."""


Frame: TypeAlias = (
    Message
    | Challenge
    | Hello
    | Proposal
    | ProposalReply
    | ReadIndexRequest
    | ReadIndexReply
    | RpcRequest
    | RpcResponse
    | Ping
)
