"""Recovery at start reaches the state live application reached: the replicated
state is rebuilt with the same `ReplicatedState.apply`, and what it asks for
(compaction, leaving the cluster) is carried out."""

from __future__ import annotations

import asyncio
from pathlib import Path

from changeagent.config import Settings
from changeagent.node.identity import META_CLUSTER_ID, META_NODE_ID
from changeagent.node.node import Node, NodeLimits
from changeagent.node.replica import recover_replicated_state
from changeagent.node.replicated_state import ReplicatedState
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
