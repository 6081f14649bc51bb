"""Recovery at start reaches the state live application reached: the replicated
state is rebuilt with the same `ReplicatedState.apply`, and what it asks for
(compaction, leaving the cluster) is carried out."""

from __future__ import annotations

import asyncio
from pathlib import Path

from changeagent.config import Settings
from changeagent.node.identity import META_CLUSTER_ID, META_NODE_ID, META_REMOVED_BY_SNAPSHOT
from changeagent.node.node import Node, NodeLimits
from changeagent.node.replica import recover_replicated_state
from changeagent.node.replicated_state import RemovedSelf, ReplicatedState
from changeagent.node.settings_entry import ENTRY_TYPE_ADDRESS, encode_address, encode_purge
from changeagent.raft import (
    ENTRY_TYPE_MEMBERSHIP,
    ENTRY_TYPE_NOOP,
    ENTRY_TYPE_PURGE,
    ConfChange,
    ConfChangeKind,
    Entry,
    HardState,
    Membership,
    Snapshot,
)
from changeagent.storage import Storage, WriteBatch

SELF, OTHER, THIRD = 11, 22, 33


def _membership_entry(index: int, kind: ConfChangeKind, node_id: int) -> Entry:
    return Entry(index, 1, ENTRY_TYPE_MEMBERSHIP, ConfChange(kind, node_id).encode())


def _member_of_three(path: Path, entries: list[Entry], commit: int) -> Storage:
    """The disk of node SELF, a member of a three-node cluster, as a crash left it."""
    storage = Storage.open(path)
    voters = frozenset({SELF, OTHER, THIRD})
    storage.submit(
        WriteBatch(
            snapshot=Snapshot(membership=Membership(voters=voters)),
            entries=entries,
            hard_state=HardState(1, OTHER, commit),
            meta={META_NODE_ID: str(SELF).encode(), META_CLUSTER_ID: b"12345"},
        )
    ).result(10)
    return storage


def test_a_node_removed_just_before_it_stopped_leaves_at_restart(tmp_path: Path) -> None:
    """DELETE /cluster/members/X, X applies its removal and stops before it left:
    on restart X must leave (standalone, its data kept, writes work), not wait
    forever as a follower of a cluster that no longer has it."""
    entries = [
        Entry(1, 1, ENTRY_TYPE_NOOP, b""),
        Entry(2, 1, ENTRY_TYPE_ADDRESS, encode_address(OTHER, "127.0.0.1:9")),
        Entry(3, 1, 0, b'{"_id":3,"data":"kept"}'),
        _membership_entry(4, ConfChangeKind.REMOVE, SELF),
    ]
    storage = _member_of_three(tmp_path / "d", entries, commit=4)

    async def scenario() -> None:
        node = Node(storage, Settings(), None, NodeLimits(commit_timeout_s=10))
        left: list[bool] = []

        async def leave() -> None:  # what ClusterMembers does, reduced to its outcome
            left.append(True)

        node.replica.set_leave_handler(leave)
        await node.start()
        try:
            assert left == [True], "the restarted node never left the cluster"
            assert node.replica.replicated.must_leave  # cleared only by the RESET the leave writes
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())


def test_recovery_and_live_application_agree(tmp_path: Path) -> None:
    """The same entries give the same replicated state live and at restart."""
    entries = [
        Entry(1, 1, ENTRY_TYPE_NOOP, b""),
        Entry(2, 1, ENTRY_TYPE_ADDRESS, encode_address(OTHER, "127.0.0.1:9")),
        Entry(
            3,
            1,
            ENTRY_TYPE_MEMBERSHIP,
            ConfChange(ConfChangeKind.ADD_LEARNER, 44, b"127.0.0.1:10").encode(),
        ),
        _membership_entry(4, ConfChangeKind.REMOVE, THIRD),
        Entry(5, 1, ENTRY_TYPE_PURGE, encode_purge(2)),
    ]
    live = ReplicatedState(SELF, Settings(), {THIRD: "127.0.0.1:8"})
    for entry in entries:
        live.apply(entry)
    storage = _member_of_three(tmp_path / "d", entries, commit=5)
    try:
        recovered, commit = recover_replicated_state(storage, SELF, Settings())
        assert commit == 5
        assert recovered.addresses == {OTHER: "127.0.0.1:9", 44: "127.0.0.1:10"}
        assert (recovered.addresses, recovered.purge_index, recovered.must_leave) == (
            live.addresses,
            live.purge_index,
            live.must_leave,
        )
    finally:
        storage.close()


def test_a_snapshot_that_lacks_a_member_removes_it_but_not_a_joiner() -> None:
    """A member that missed its REMOVE (compacted away) learns its removal from the
    leader's snapshot; a joining node, not yet added, gets the same kind of
    snapshot (from before its ADD_LEARNER) and must stay."""
    others = frozenset({OTHER, THIRD})
    member = ReplicatedState.from_snapshot(SELF, b"", Settings(), {SELF, OTHER, THIRD})
    assert member.removed_by(others)
    effects = member.install_snapshot(b"", others)
    assert any(isinstance(effect, RemovedSelf) for effect in effects)
    assert member.must_leave and not member.member

    joiner = ReplicatedState.from_snapshot(SELF, b"", Settings(), others)
    assert not joiner.removed_by(others)
    assert joiner.install_snapshot(b"", others) == [] and not joiner.must_leave
    joiner.apply(_membership_entry(7, ConfChangeKind.ADD_LEARNER, SELF))
    assert joiner.member and joiner.removed_by(others)


def test_a_node_removed_by_a_snapshot_leaves_at_restart(tmp_path: Path) -> None:
    """The snapshot that removed it was written with a durable mark; the process
    stopped before it left: on restart it leaves."""
    storage = Storage.open(tmp_path / "d")
    removed = Snapshot(9, 2, Membership(voters=frozenset({OTHER, THIRD})))
    storage.submit(
        WriteBatch(
            snapshot=removed,
            hard_state=HardState(2, OTHER, 9),
            meta={
                META_NODE_ID: str(SELF).encode(),
                META_CLUSTER_ID: b"12345",
                META_REMOVED_BY_SNAPSHOT: b"1",
            },
        )
    ).result(10)

    async def scenario() -> None:
        node = Node(storage, Settings(), None, NodeLimits(commit_timeout_s=10))
        left: list[bool] = []

        async def leave() -> None:
            left.append(True)

        node.replica.set_leave_handler(leave)
        await node.start()
        try:
            assert left == [True], "the node a snapshot removed never left"
        finally:
            await node.close()
            storage.close()

    asyncio.run(scenario())
