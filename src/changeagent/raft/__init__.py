"""changeagent.raft: the Raft consensus algorithm as a pure, deterministic state machine.

(Work in progress: the interface is stable, the algorithm is being written.)
"""

from changeagent.raft.confchange import ConfChange, ConfChangeKind
from changeagent.raft.config import RaftConfig
from changeagent.raft.core import RaftNode
from changeagent.raft.entry import (
    ENTRY_TYPE_CONFIG,
    ENTRY_TYPE_MEMBERSHIP,
    ENTRY_TYPE_NOOP,
    ENTRY_TYPE_PURGE,
    Entry,
    HardState,
)
from changeagent.raft.errors import (
    ConfigError,
    InvariantViolation,
    MembershipChangeRejected,
    NotLeader,
    ProposalDropped,
    RaftError,
)
from changeagent.raft.interfaces import Compacted, LogReader, Membership, Snapshot, Unavailable
from changeagent.raft.messages import TRANSFER_CONTEXT, Message, MessageType
from changeagent.raft.ready import PeerProgress, ProgressState, ReadState, Ready, Role, SoftState

__all__ = [
    "ENTRY_TYPE_CONFIG",
    "ENTRY_TYPE_MEMBERSHIP",
    "ENTRY_TYPE_NOOP",
    "ENTRY_TYPE_PURGE",
    "TRANSFER_CONTEXT",
    "Compacted",
    "ConfChange",
    "ConfChangeKind",
    "ConfigError",
    "Entry",
    "HardState",
    "InvariantViolation",
    "LogReader",
    "Membership",
    "MembershipChangeRejected",
    "Message",
    "MessageType",
    "NotLeader",
    "PeerProgress",
    "ProgressState",
    "ProposalDropped",
    "RaftConfig",
    "RaftError",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SoftState",
    "Unavailable",
]
