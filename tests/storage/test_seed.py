"""Seeds: a member's committed log copied into a joining node's empty log
(`inspect_seed`, `WriteBatch(discard_log=True, seed=...)`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from changeagent.raft.entry import HardState
from changeagent.storage import Storage, StorageError, WriteBatch
from changeagent.storage.backup import copy_committed
from changeagent.storage.seed import SeedInfo, inspect_seed

from .conftest import append, change, noop, write


def _member_copy(tmp_path: Path, compact_to: int | None = None) -> Path:
    """The copy a leader sends: 20 entries (tags, keys), 15 committed."""
    member = Storage.open(tmp_path / "member")
    try:
        entries = [noop(1)] + [
            change(index, term=2, tags=["even" if index % 2 == 0 else "odd"], key=f"k{index}")
            for index in range(2, 21)
        ]
        append(member, *entries)
        write(member, WriteBatch(hard_state=HardState(term=3, vote=1, commit=15)))
        if compact_to is not None:
            write(member, WriteBatch(compact_to=compact_to, compact_data=b"settings"))
        copy = tmp_path / "seed.db"
        copy_committed(member.data_dir, copy, 15, ())
    finally:
        member.close()
    return copy


def _joined(tmp_path: Path) -> Storage:
    """A node that was standalone (its own no-op), as it is after the join RPC."""
    storage = Storage.open(tmp_path / "joining")
    append(storage, noop(1, term=1), noop(2, term=1))
    return storage


def test_inspect_seed_reads_the_committed_log(tmp_path: Path) -> None:
    info = inspect_seed(_member_copy(tmp_path))
    assert (info.snapshot.index, info.last_index, info.entries) == (0, 15, 15)
    assert info.hard_state == HardState(term=3, vote=1, commit=15)


def test_a_seed_replaces_the_log_with_the_members_prefix(tmp_path: Path) -> None:
    info = inspect_seed(_member_copy(tmp_path))
    storage = _joined(tmp_path)
    try:
        hard_state = HardState(term=3, vote=0, commit=15)
        write(storage, WriteBatch(discard_log=True, seed=info, hard_state=hard_state))
        assert (storage.first_index(), storage.last_index()) == (1, 15)
        assert storage.hard_state() == hard_state
        assert storage.first_user_index() == 2
        assert storage.term(15) == 2 and storage.term(1) == 1
        page = storage.read_changes(0, 100, tags=["even"])
        expected = [change(i, term=2, tags=["even"]).data for i in range(2, 16, 2)]
        assert page.bodies == expected
        assert storage.idempotency_lookup("k9") == 9 and storage.idempotency_lookup("k16") is None
        # The log goes on after the seed, and all of it is there after a reopen.
        append(storage, noop(16, term=3))
        storage.close()
        storage = Storage.open(tmp_path / "joining")
        assert (storage.last_index(), storage.hard_state().commit) == (16, 15)
        assert [entry.index for entry in storage.entries(1, 17, 1 << 20)] == list(range(1, 17))
    finally:
        storage.close()


def test_a_compacted_seed_keeps_its_snapshot_record(tmp_path: Path) -> None:
    info = inspect_seed(_member_copy(tmp_path, compact_to=6))
    assert (info.snapshot.index, info.snapshot.data, info.entries) == (6, b"settings", 9)
    storage = _joined(tmp_path)
    try:
        write(storage, WriteBatch(discard_log=True, seed=info, hard_state=info.hard_state))
        assert (storage.first_index(), storage.last_index()) == (7, 15)
        assert storage.snapshot() == info.snapshot
        assert storage.first_user_index() == 7
    finally:
        storage.close()


def test_a_seed_goes_only_into_a_discarded_log(tmp_path: Path) -> None:
    info = inspect_seed(_member_copy(tmp_path))
    with pytest.raises(ValueError, match="discarded log"):
        WriteBatch(seed=info).validate()
    with pytest.raises(ValueError, match="discarded log"):
        WriteBatch(discard_log=True, seed=info, entries=[noop(16)]).validate()


def test_two_seeds_in_one_group_the_second_is_rejected(tmp_path: Path) -> None:
    info = inspect_seed(_member_copy(tmp_path))
    other = tmp_path / "other.db"
    other.write_bytes(info.path.read_bytes())
    storage = _joined(tmp_path)
    try:
        first = storage.submit(WriteBatch(discard_log=True, seed=info))
        second = storage.submit(WriteBatch(discard_log=True, seed=SeedInfo(other, *_rest(info))))
        first.result(timeout=30)
        if second.exception(timeout=30) is not None:  # grouped with the first
            assert "one seed per transaction" in str(second.exception())
        assert storage.last_index() == 15 and storage.failure is None
    finally:
        storage.close()


def _rest(info: SeedInfo) -> tuple[object, ...]:
    return (info.snapshot, info.hard_state, info.last_index)


@pytest.mark.parametrize(
    "damage",
    ["not a database", "gap", "uncommitted", "bad meta"],
)
def test_inspect_seed_refuses_what_is_not_a_committed_log(tmp_path: Path, damage: str) -> None:
    path = _member_copy(tmp_path)
    if damage == "not a database":
        path.write_bytes(b"this is not SQLite" * 100)
    else:
        connection = sqlite3.connect(path, isolation_level=None)
        statement = {
            "gap": "DELETE FROM entries WHERE idx = 7",
            "uncommitted": "DELETE FROM entries WHERE idx = 15",
            "bad meta": "UPDATE meta SET value = x'00' || value WHERE key = 'storage.hard_state'",
        }[damage]
        connection.execute(statement)
        connection.close()
    with pytest.raises(StorageError):
        inspect_seed(path)
