"""changeagent.raft: the Raft consensus algorithm as a pure, deterministic state machine.

How it works. A `RaftNode` holds the volatile Raft state (role, term, vote,
commit index, the leader's per-peer `Progress`) and reads its durable log
through an injected `LogReader`. It never does I/O and never reads a clock:

- inputs: `tick()` (logical time), `step(message)` (a peer's `Message`),
  `propose(...)`, `propose_membership(ConfChange)`, `read_index(context)`,
  `transfer_leadership(target)`, `campaign()`, `compact(index, data)`;
- output: `ready()` returns a `Ready` — hard state, entries and snapshot to
  persist, messages to send (some only after persisting), committed entries to
  apply, confirmed `ReadState`s, and the new `SoftState` — and `advance(ready)`
  acknowledges it. `Ready`'s docstring is the ordering contract.

Entries accepted but not yet persisted live in memory (`RaftLog.unstable`); the
leader counts its own copy toward the commit quorum only after `advance`.
`step` first applies the term rules shared by all roles (§5.1, PreVote, leader
stickiness), then dispatches to one small handler per (role, message type).
After every input an `InvariantChecker` verifies the core's invariants and
raises `InvariantViolation` if one fails. Randomness (election timeouts) comes
from an injected `random.Random`, so a seed replays exactly.

Bootstrap: give the first node a `LogReader` whose `snapshot()` is
`Snapshot(index=1, term=1, membership=Membership(voters={node_id}))` and call
`campaign()` (it becomes leader when that Ready is advanced, once its vote
is durable); other nodes start with an empty log and are added with
`ConfChange(ADD_LEARNER)` then `PROMOTE`. (They receive that snapshot from the
leader; a snapshot at index 0 cannot be sent, so with one — what the node layer
uses, so that a fresh node's first entry is index 1 — every joining node must be
given the same base membership out of band: the node layer sends it in its
`join` request.) `DEMOTE` turns a voter (the leader too) back into a learner.
A removed node that continues alone writes a `RESET` membership entry into
its own log (never proposed): membership {itself}.

See DESIGN.md in this directory for the decisions and trade-offs.
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
