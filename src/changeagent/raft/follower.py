"""What a follower does with its leader's APPEND, HEARTBEAT and SNAPSHOT (§5.3, §7).

Plain functions of the `RaftNode` whose state they read and write. Each
handler resets the election timer and records the sender as leader. Append
responses promise durable entries, so they leave only after the Ready is
persisted; heartbeat responses promise nothing and may leave at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changeagent.raft import reconfiguration
from changeagent.raft.entry import Entry
from changeagent.raft.errors import InvariantViolation
from changeagent.raft.interfaces import Compacted
from changeagent.raft.messages import COMMIT_ONLY_CONTEXT, Message, MessageType

if TYPE_CHECKING:
    from changeagent.raft.core import RaftNode

_MT = MessageType


def on_append(node: RaftNode, message: Message) -> None:
    """§5.3: accept entries only if the log contains the preceding entry."""
    node._election_elapsed = 0
    node._leader = message.source
    log = node._log
    if message.index < log.commit:
        respond_append(node, message.source, log.commit)
        return
    if not log.match_term(message.index, message.log_term):
        reject_append(node, message)
        return
    entries = message.entries
    if entries:
        if message.index == log.last_index():
            conflict = entries[0].index
        else:
            conflict = log.find_conflict(entries)
        if conflict:
            if conflict <= log.commit:
                raise InvariantViolation(f"entry {conflict} conflicts with a committed entry")
            append_from_leader(node, entries[conflict - entries[0].index :])
    last_new = message.index + len(entries)
    log.commit_to(min(message.commit, last_new))
    if entries or message.context != COMMIT_ONLY_CONTEXT:
        respond_append(node, message.source, last_new)


def append_from_leader(node: RaftNode, entries: tuple[Entry, ...]) -> None:
    """Append new entries; overwriting ours also undoes the membership changes they
    made (§4.1: the configuration in use is the latest in the log)."""
    first = entries[0].index
    if first <= node._log.last_index() and node._memberships.truncate_from(first):
        reconfiguration.on_membership_changed(node)
    node._log.append(entries)
    reconfiguration.on_entries_appended(node, entries)


def respond_append(node: RaftNode, leader: int, index: int) -> None:
    node._outbox.send_after_persist(
        Message(_MT.APPEND_RESPONSE, node._id, leader, node._term, index=index)
    )


def reject_append(node: RaftNode, message: Message) -> None:
    # Fast backoff: point the leader at the last entry whose term could match.
    log = node._log
    hint_index = log.find_conflict_by_term(min(message.index, log.last_index()), message.log_term)
    try:
        hint_term = log.term(hint_index)
    except Compacted:
        hint_term = 0
    node._outbox.send_after_persist(
        Message(
            _MT.APPEND_RESPONSE,
            node._id,
            message.source,
            node._term,
            log_term=hint_term,
            index=message.index,
            reject=True,
            reject_hint=hint_index,
        )
    )


def on_heartbeat(node: RaftNode, message: Message) -> None:
    """The leader sends min(our match, its commit), which our log is known to hold."""
    node._election_elapsed = 0
    node._leader = message.source
    node._log.commit_to(message.commit)
    node._outbox.send(
        Message(
            _MT.HEARTBEAT_RESPONSE,
            node._id,
            message.source,
            node._term,
            index=message.index,
            commit=node._log.commit,
        )
    )


def on_snapshot(node: RaftNode, message: Message) -> None:
    """§7: install the leader's snapshot unless our log already covers it."""
    node._election_elapsed = 0
    node._leader = message.source
    snapshot = message.snapshot
    log = node._log
    if snapshot is None or snapshot.index <= log.commit:
        respond_append(node, message.source, log.commit)
        return
    if log.match_term(snapshot.index, snapshot.term):
        # Our log already has the snapshot's last entry: just commit up to it.
        log.commit_to(snapshot.index)
        respond_append(node, message.source, snapshot.index)
        return
    log.restore(snapshot)
    node._memberships.reset(snapshot.membership, snapshot.index)
    respond_append(node, message.source, snapshot.index)
