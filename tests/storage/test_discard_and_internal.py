"""Discarding the whole log (a node about to join a cluster) and finding internal
entries through the type index (recovery at start-up)."""

from __future__ import annotations

from pathlib import Path

from changeagent.raft.entry import ENTRY_TYPE_CONFIG, Entry, HardState
from changeagent.raft.interfaces import Membership, Snapshot
from changeagent.storage import Storage, WriteBatch

from .conftest import append, change, noop, write


def test_discard_log_empties_everything_and_takes_a_base_membership(
    storage: Storage, data_dir: Path
) -> None:
    append(storage, noop(1, 3), change(2, 3, tags=("a",), key="k"), noop(3, 4))
    base = Snapshot(membership=Membership(voters=frozenset({9})))
    write(storage, WriteBatch(discard_log=True, snapshot=base, hard_state=HardState()))
    assert (storage.first_index(), storage.last_index()) == (1, 0)
    assert storage.snapshot() == base
    assert storage.hard_state() == HardState()
    assert storage.idempotency_lookup("k") is None
    assert storage.read_changes(since=0, limit=10, tags=("a",), type=None, upto=10).bodies == []
    assert storage.first_user_index() == 0
    # The log starts again at index 1, as a leader's first append expects.
    append(storage, noop(1, 1), change(2, 1))
    assert storage.term(2) == 1
    storage.close()
    reopened = Storage.open(data_dir)
    try:
        assert reopened.snapshot() == base
        assert reopened.last_index() == 2
    finally:
        reopened.close()


def test_discard_log_after_a_compaction(storage: Storage) -> None:
    append(storage, noop(1), change(2), change(3))
    write(storage, WriteBatch(compact_to=2))
    write(storage, WriteBatch(discard_log=True))
    assert storage.snapshot() == Snapshot()
    assert (storage.first_index(), storage.last_index()) == (1, 0)


def test_internal_entries_skips_changes(storage: Storage) -> None:
    config = Entry(4, 1, ENTRY_TYPE_CONFIG, b"minPurgeRecords: 1\n")
    append(storage, noop(1), change(2), change(3), config, change(5), noop(6, 2))
    assert storage.internal_entries(1, 7) == [noop(1), config, noop(6, 2)]
    assert storage.internal_entries(2, 6) == [config]
    assert storage.internal_entries(5, 6) == []


def test_a_noted_commit_index_survives_a_reopen(data_dir: Path) -> None:
    storage = Storage.open(data_dir)
    append(storage, noop(1), change(2), change(3))
    write(storage, WriteBatch(hard_state=HardState(1, 1, 1)))
    storage.note_commit(3)
    storage.note_commit(2)  # never lowers it
    storage.close()
    reopened = Storage.open(data_dir)
    try:
        assert reopened.hard_state() == HardState(1, 1, 3)
        # A new history (joining a cluster) forgets it.
        write(reopened, WriteBatch(discard_log=True, hard_state=HardState()))
        append(reopened, noop(1), change(2), change(3), change(4))
    finally:
        reopened.close()
    again = Storage.open(data_dir)
    try:
        assert again.hard_state().commit == 0
    finally:
        again.close()


def test_a_torn_commit_note_is_ignored(data_dir: Path) -> None:
    storage = Storage.open(data_dir)
    append(storage, noop(1), change(2))
    storage.note_commit(2)
    storage.close()
    hint = data_dir / "commit-index"
    hint.write_bytes(hint.read_bytes()[:8] + b"\x00\x00\x00\x00")
    reopened = Storage.open(data_dir)
    try:
        assert reopened.hard_state().commit == 0
    finally:
        reopened.close()
