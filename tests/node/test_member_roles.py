"""Read-only members: which learners stay learners is replicated state. It is
derived from committed membership entries alone (ADD_LEARNER with its role,
PROMOTE, DEMOTE, REMOVE), recorded in compaction points and snapshots, and
rebuilt at start through the same `apply`, so every node and any future leader
agrees on whom the leader promotes."""

from __future__ import annotations

from pathlib import Path

import orjson

from changeagent.config import Settings, settings_to_yaml
from changeagent.node.replica import recover_replicated_state
from changeagent.node.replicated_state import AddressChanged, ReplicatedState
from changeagent.node.settings_entry import (
    decode_member_context,
    decode_snapshot_data,
    encode_member_context,
    encode_snapshot_data,
)
from changeagent.raft import (
    ENTRY_TYPE_MEMBERSHIP,
    ENTRY_TYPE_NOOP,
    ConfChange,
    ConfChangeKind,
    Entry,
    HardState,
    Membership,
    Snapshot,
)
from changeagent.storage import Storage, WriteBatch

SELF, OTHER, READER, JOINER = 11, 22, 33, 44
KIND = ConfChangeKind


def _change(index: int, kind: ConfChangeKind, node_id: int, context: bytes = b"") -> Entry:
    return Entry(index, 1, ENTRY_TYPE_MEMBERSHIP, ConfChange(kind, node_id, context).encode())


def _add(index: int, node_id: int, address: str, *, keep_learner: bool) -> Entry:
    context = encode_member_context(address, keep_learner=keep_learner)
    return _change(index, KIND.ADD_LEARNER, node_id, context)


def test_member_contexts_round_trip_and_old_ones_read_as_before() -> None:
    for keep in (False, True):
        context = encode_member_context("10.0.0.7:8080", keep_learner=keep)
        assert decode_member_context(context) == ("10.0.0.7:8080", keep)
    # Written before roles existed (and still for members to promote): the address alone.
    assert encode_member_context("h:1", keep_learner=False) == b"h:1"
    assert decode_member_context(b"") == (None, False)  # the simulator's members


def test_roles_follow_the_membership_entries() -> None:
    state = ReplicatedState(SELF, Settings())
    effects = state.apply(_add(1, READER, "h:3", keep_learner=True))
    assert effects == [AddressChanged(READER, "h:3")]
    state.apply(_add(2, JOINER, "h:4", keep_learner=False))
    assert state.kept_learners == {READER}
    assert state.learners_to_promote({READER, JOINER}) == [JOINER]
    state.apply(_change(3, KIND.PROMOTE, JOINER))
    state.apply(_change(4, KIND.DEMOTE, OTHER))
    assert state.kept_learners == {READER, OTHER}
    state.apply(_change(5, KIND.PROMOTE, READER))  # PUT role=voter
    assert state.kept_learners == {OTHER}
    state.apply(_change(6, KIND.REMOVE, OTHER))
    assert state.kept_learners == set()
    assert state.addresses == {READER: "h:3", JOINER: "h:4"}


def test_leaving_forgets_the_old_clusters_roles() -> None:
    state = ReplicatedState(SELF, Settings(), member=True)
    state.apply(_add(1, READER, "h:3", keep_learner=True))
    state.apply(_change(2, KIND.REMOVE, SELF))
    state.apply(_change(3, KIND.RESET, SELF))
    assert state.kept_learners == set()


def test_snapshot_data_carries_the_kept_learners_and_old_data_keeps_none() -> None:
    state = ReplicatedState(SELF, Settings())
    state.apply(_add(1, READER, "h:3", keep_learner=True))
    recorded = decode_snapshot_data(state.snapshot_data())
    assert recorded.kept_learners == {READER}
    assert recorded.addresses == {READER: "h:3"}
    old = orjson.dumps({"settings": settings_to_yaml(Settings()), "addresses": {"22": "h:2"}})
    assert decode_snapshot_data(old).kept_learners == frozenset()
    assert decode_snapshot_data(encode_snapshot_data(Settings(), {})).kept_learners == set()


def test_a_snapshot_replaces_the_roles_and_the_entries_after_it_bring_them_up_to_date() -> None:
    """Compaction records the state at the applied index, which may be past the
    snapshot's index: re-applying the entries after the snapshot changes nothing."""
    leader = ReplicatedState(OTHER, Settings())
    entries = [
        _add(1, READER, "h:3", keep_learner=True),
        _change(2, KIND.DEMOTE, SELF),
        _change(3, KIND.PROMOTE, SELF),
        _change(4, KIND.DEMOTE, JOINER),
    ]
    for entry in entries:
        leader.apply(entry)
    follower = ReplicatedState(SELF, Settings(), kept_learners={99})
    follower.install_snapshot(leader.snapshot_data(), {OTHER, SELF, READER, JOINER})
    assert follower.kept_learners == {READER, JOINER}
    for entry in entries[2:]:  # the snapshot was taken at index 2
        follower.apply(entry)
    assert follower.kept_learners == leader.kept_learners == {READER, JOINER}


def test_recovery_rebuilds_the_roles_from_the_snapshot_and_the_log(tmp_path: Path) -> None:
    kept_before = encode_snapshot_data(Settings(), {READER: "h:3"}, {READER})
    entries = [
        Entry(6, 1, ENTRY_TYPE_NOOP, b""),
        _add(7, JOINER, "h:4", keep_learner=True),
        _change(8, KIND.DEMOTE, OTHER),
        _change(9, KIND.PROMOTE, READER),
    ]
    live = ReplicatedState.from_snapshot(SELF, kept_before, Settings(), {SELF, OTHER, READER})
    for entry in entries:
        live.apply(entry)
    storage = Storage.open(tmp_path / "d")
    try:
        membership = Membership(frozenset({SELF, OTHER}), frozenset({READER}))
        storage.submit(
            WriteBatch(
                snapshot=Snapshot(5, 1, membership, kept_before),
                entries=entries,
                hard_state=HardState(1, SELF, 9),
            )
        ).result(10)
        recovered, commit = recover_replicated_state(storage, SELF, Settings())
        assert commit == 9
        assert recovered.kept_learners == live.kept_learners == {JOINER, OTHER}
        assert recovered.addresses == live.addresses
    finally:
        storage.close()
