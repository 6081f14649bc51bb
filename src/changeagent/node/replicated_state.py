"""ReplicatedState: what a node's internal log entries mean, as a pure function.

Every member applies the same committed internal entries (settings, member
addresses, purge points, membership changes and the roles members are meant
to keep) and must end in the same state,
whether it applies them live, one Ready at a time, or rebuilds them at start from
its snapshot record and the committed log. Both paths call `apply`, so recovery
reaches exactly the state live application reached (a node removed just before it
crashed once restarted as a follower of a cluster that no longer had it, because
recovery decoded the entries with other effects than live application did).

`apply(entry)` returns *effects*: what the runtime must do about the change
(adopt new Raft timeouts, rewrite the settings file, reconnect to a moved peer,
forget a removed one, compact the log, leave the cluster). This module does no
I/O and keeps no clock, so the simulator runs it as production does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from changeagent.config import Settings
from changeagent.node.settings_entry import (
    ENTRY_TYPE_ADDRESS,
    decode_address,
    decode_member_context,
    decode_purge,
    decode_settings,
    decode_snapshot_data,
    encode_snapshot_data,
)
from changeagent.raft import (
    ENTRY_TYPE_CONFIG,
    ENTRY_TYPE_MEMBERSHIP,
    ENTRY_TYPE_PURGE,
    ConfChange,
    ConfChangeKind,
    Entry,
)


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """New replicated settings: adopt changed Raft timeouts, rewrite the -f file."""

    previous: Settings
    settings: Settings

    @property
    def timeouts_changed(self) -> bool:
        before, after = self.previous, self.settings
        return (before.election_timeout_ns, before.heartbeat_timeout_ns) != (
            after.election_timeout_ns,
            after.heartbeat_timeout_ns,
        )


@dataclass(frozen=True, slots=True)
class AddressChanged:
    """A member's address is known or moved: links to it reconnect there."""

    node_id: int
    address: str


@dataclass(frozen=True, slots=True)
class MemberRemoved:
    """Another member left: free its link."""

    node_id: int


@dataclass(frozen=True, slots=True)
class PurgeCommitted:
    """Compact the log to `index` once the core counts it applied."""

    index: int


@dataclass(frozen=True, slots=True)
class RemovedSelf:
    """This node applied its own removal: it leaves and becomes standalone."""


Effect = SettingsChanged | AddressChanged | MemberRemoved | PurgeCommitted | RemovedSelf


@dataclass(slots=True)
class ReplicatedState:
    """Settings, member addresses, the purge point, the learners kept as learners
    and whether this node must leave.

    Invariant: equal sequences of `apply`/`install_snapshot` calls from equal
    starting states give equal states and equal effects.
    """

    node_id: int
    settings: Settings
    addresses: dict[int, str] = field(default_factory=dict)  # member id -> host:port
    purge_index: int = 0  # highest purge point applied (compaction may lag behind it)
    # Read-only members: learners that stay learners (added with role=learner or
    # demoted). The leader promotes every other learner once it has caught up.
    # Replicated, so every node, and so any future leader, agrees on it.
    kept_learners: set[int] = field(default_factory=set)
    # Set by our own REMOVE (or a snapshot that removes us), cleared by the RESET
    # entry the node writes when it leaves: a node that crashed in between still
    # has to leave after a restart.
    must_leave: bool = False
    # This node is in the membership its applied state knows. A joining node is
    # not until its ADD_LEARNER applies, so a leader's snapshot from before that
    # (which lacks it) is no removal; for a member, such a snapshot is one.
    member: bool = False

    @classmethod
    def from_snapshot(
        cls, node_id: int, data: bytes, default: Settings, members: Iterable[int] = ()
    ) -> ReplicatedState:
        """The state a compaction point recorded (`default` settings if it has none);
        `members` are the voters and learners of the snapshot's membership."""
        recorded = decode_snapshot_data(data)
        settings = recorded.settings if recorded.settings is not None else default
        state = cls(
            node_id, settings, recorded.addresses, kept_learners=set(recorded.kept_learners)
        )
        state.member = node_id in set(members)
        return state

    @classmethod
    def recover(
        cls,
        node_id: int,
        snapshot_data: bytes,
        default: Settings,
        committed: Iterable[Entry],
        *,
        members: Iterable[int] = (),
        removed_by_snapshot: bool = False,
    ) -> ReplicatedState:
        """At start: the snapshot's state, then every committed internal entry after
        it through `apply`, exactly as live application went. `removed_by_snapshot`
        is the durable mark written with a leader's snapshot that removed this node
        (the snapshot alone cannot tell a removed node from a joining one). The
        caller acts on what the result says is left to do (`purge_index` beyond
        the snapshot, `must_leave`)."""
        state = cls.from_snapshot(node_id, snapshot_data, default, members)
        state.must_leave = removed_by_snapshot
        for entry in committed:
            state.apply(entry)
        return state

    def removed_by(self, members: Iterable[int]) -> bool:
        """Whether a leader's snapshot with these voters and learners removes this node."""
        return self.member and self.node_id not in set(members)

    def snapshot_data(self) -> bytes:
        """What a compaction point records of this state (see `settings_entry`)."""
        return encode_snapshot_data(self.settings, self.addresses, self.kept_learners)

    def apply(self, entry: Entry) -> list[Effect]:
        """Apply one committed entry; user changes (type >= 0) have no effect here."""
        if entry.type == ENTRY_TYPE_CONFIG:
            return self._set_settings(decode_settings(entry.data))
        if entry.type == ENTRY_TYPE_ADDRESS:
            return self._set_address(*decode_address(entry.data))
        if entry.type == ENTRY_TYPE_PURGE:
            return self._purge(decode_purge(entry.data))
        if entry.type == ENTRY_TYPE_MEMBERSHIP:
            return self._apply_membership(ConfChange.decode(entry.data))
        return []

    def install_snapshot(self, data: bytes, members: Iterable[int]) -> list[Effect]:
        """The leader replaced our log with a snapshot (`members`: its voters and
        learners): adopt the state it records. A member the snapshot lacks was
        removed while it did not hear of it (its REMOVE entry is compacted away)."""
        members = set(members)
        removed = self.removed_by(members)
        recorded = decode_snapshot_data(data)
        effects: list[Effect] = []
        if recorded.settings is not None:
            effects += self._set_settings(recorded.settings)
        for node_id, address in sorted(recorded.addresses.items()):
            effects += self._set_address(node_id, address)
        # The snapshot's record replaces ours: the entries after it, which we
        # apply next, bring it up to date (applying one again changes nothing).
        self.kept_learners = set(recorded.kept_learners)
        if removed:
            self.member, self.must_leave = False, True
            effects.append(RemovedSelf())
        elif self.node_id in members:
            self.member = True
        return effects

    def _set_settings(self, settings: Settings) -> list[Effect]:
        previous, self.settings = self.settings, settings
        return [SettingsChanged(previous, settings)]

    def _set_address(self, node_id: int, address: str) -> list[Effect]:
        changed = self.addresses.get(node_id) != address
        self.addresses[node_id] = address
        return [AddressChanged(node_id, address)] if changed and node_id != self.node_id else []

    def _purge(self, index: int) -> list[Effect]:
        if index <= self.purge_index:
            return []
        self.purge_index = index
        return [PurgeCommitted(index)]

    def _apply_membership(self, change: ConfChange) -> list[Effect]:
        ours, kind = change.node_id == self.node_id, change.kind
        if kind is ConfChangeKind.ADD_LEARNER:
            self.member = self.member or ours
            address, keep_learner = decode_member_context(change.context)
            self._keep_learner(change.node_id, keep_learner)
            return self._set_address(change.node_id, address) if address else []
        if kind is ConfChangeKind.PROMOTE or kind is ConfChangeKind.DEMOTE:
            self._keep_learner(change.node_id, kind is ConfChangeKind.DEMOTE)
            return []
        if kind is ConfChangeKind.REMOVE:
            self.addresses.pop(change.node_id, None)
            self.kept_learners.discard(change.node_id)
            if ours:
                self.member, self.must_leave = False, True
                return [RemovedSelf()]
            return [MemberRemoved(change.node_id)]
        if kind is ConfChangeKind.RESET and ours:
            # A cluster of this node alone: nothing of the old one's roles holds.
            self.member, self.must_leave = True, False
            self.kept_learners.clear()
        return []

    def _keep_learner(self, node_id: int, keep: bool) -> None:
        if keep:
            self.kept_learners.add(node_id)
        else:
            self.kept_learners.discard(node_id)

    def learners_to_promote(self, learners: Iterable[int]) -> list[int]:
        """The learners the leader should promote once they have caught up: those
        not kept as learners. Meaningful only once every membership entry in the
        log is applied (the caller checks), since roles change on commit."""
        return sorted(set(learners) - self.kept_learners)
