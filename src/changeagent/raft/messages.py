"""Messages exchanged between Raft cores.

One flat, frozen record for every message type keeps the transport's encoder
trivial (a fixed tuple of fields). Which fields are meaningful depends on the
type; the table below is the contract.

- PRE_VOTE, VOTE: `log_term`/`index` are the candidate's last entry; `context` is
  `TRANSFER_CONTEXT` when the campaign was forced by TIMEOUT_NOW. A PRE_VOTE's
  `term` is the term the sender would campaign in (its own term + 1).
- PRE_VOTE_RESPONSE, VOTE_RESPONSE: `reject` is True when the vote is refused.
- APPEND: `log_term`/`index` name the entry preceding `entries`; `commit` is the
  leader's commit index. `context` is `COMMIT_ONLY_CONTEXT` on an APPEND without
  entries that a leader broadcasts after a commit to a follower it replicates to
  optimistically (its progress is in the replicate state): it only carries the
  commit index, and a follower that accepts it does not answer (the entries' own
  answers carry the follower's index; one that was lost is found through the
  heartbeats, whose answers make the leader send an unmarked empty APPEND). A
  rejection is still sent.
- APPEND_RESPONSE: on success `index` is the follower's last index known to match
  the leader. On rejection `index` is the rejected APPEND's `index`, and
  `reject_hint`/`log_term` are the follower's hint for fast backoff: the largest
  index whose term is <= the APPEND's `log_term`, and that term.
- HEARTBEAT: `commit` is min(follower's match, commit); `index` is the leader's
  latest ReadIndex round. HEARTBEAT_RESPONSE echoes `index`; its `commit` is the
  follower's commit index (the leader learns from it that a follower it sent a
  SNAPSHOT to has installed it, even if the APPEND_RESPONSE was lost).
- SNAPSHOT: `snapshot` is the leader's compaction point. The follower answers
  with an APPEND_RESPONSE.
- TIMEOUT_NOW: campaign at once (leadership transfer).
- READ_INDEX: a follower forwards a ReadIndex request; `context` identifies it.
  READ_INDEX_RESPONSE carries the confirmed `index`, or `reject` if the leader
  could not serve it.

Node ids are positive integers; 0 never names a node.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from changeagent.raft.entry import Entry
from changeagent.raft.interfaces import Snapshot

# A VOTE carrying this context was forced by TIMEOUT_NOW (leadership transfer):
# receivers grant it even if they heard from a leader recently.
TRANSFER_CONTEXT = b"transfer"
# An APPEND carrying this context needs no answer unless it is rejected.
COMMIT_ONLY_CONTEXT = b"commit"


class MessageType(IntEnum):
    """Every message type; values are stable because they go on the wire."""

    PRE_VOTE = 1
    PRE_VOTE_RESPONSE = 2
    VOTE = 3
    VOTE_RESPONSE = 4
    APPEND = 5
    APPEND_RESPONSE = 6
    HEARTBEAT = 7
    HEARTBEAT_RESPONSE = 8
    SNAPSHOT = 9
    TIMEOUT_NOW = 10
    READ_INDEX = 11
    READ_INDEX_RESPONSE = 12


@dataclass(frozen=True, slots=True, init=False)
class Message:
    """One Raft message from `source` to `target`, sent in `term`.

    Its `__init__` is written out, as `Entry`'s: every write makes ~6 messages
    across a 3-member cluster (two APPENDs and their decoded copies, two
    acknowledgements), and the frozen dataclass's own (`object.__setattr__` per
    field, twelve fields) took 3.4 µs where setting the slots directly takes ~1.
    Frozen, equality, hashing and `repr` are the dataclass's, as before.
    """

    type: MessageType
    source: int
    target: int
    term: int
    log_term: int
    index: int
    entries: tuple[Entry, ...]
    commit: int
    reject: bool
    reject_hint: int
    snapshot: Snapshot | None
    context: bytes

    def __init__(
        self,
        type: MessageType,
        source: int,
        target: int,
        term: int,
        log_term: int = 0,
        index: int = 0,
        entries: tuple[Entry, ...] = (),
        commit: int = 0,
        reject: bool = False,
        reject_hint: int = 0,
        snapshot: Snapshot | None = None,
        context: bytes = b"",
    ) -> None:
        _set_type(self, type)
        _set_source(self, source)
        _set_target(self, target)
        _set_term(self, term)
        _set_log_term(self, log_term)
        _set_index(self, index)
        _set_entries(self, entries)
        _set_commit(self, commit)
        _set_reject(self, reject)
        _set_reject_hint(self, reject_hint)
        _set_snapshot(self, snapshot)
        _set_context(self, context)


# The slots' own setters: what a frozen dataclass's __init__ reaches the slow way.
(
    _set_type,
    _set_source,
    _set_target,
    _set_term,
    _set_log_term,
    _set_index,
    _set_entries,
    _set_commit,
    _set_reject,
    _set_reject_hint,
    _set_snapshot,
    _set_context,
) = (vars(Message)[name].__set__ for name in Message.__slots__)


RESPONSE_TYPES = frozenset(
    {
        MessageType.PRE_VOTE_RESPONSE,
        MessageType.VOTE_RESPONSE,
        MessageType.APPEND_RESPONSE,
        MessageType.HEARTBEAT_RESPONSE,
        MessageType.READ_INDEX_RESPONSE,
    }
)
