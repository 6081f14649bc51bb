"""Seeds: a member's committed log made a joining node's database
(`inspect_seed`, `WriteBatch(seed=...)`: the file replaces the database)."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from changeagent.raft.entry import HardState
from changeagent.storage import BatchRejected, Storage, StorageError, WriteBatch
from changeagent.storage.backup import copy_committed
from changeagent.storage.seed import inspect_seed

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
        meta = {"node_id": b"1", "sender_only": b"x"}  # the sender's: never the joiner's
        write(member, WriteBatch(hard_state=HardState(term=3, vote=1, commit=15), meta=meta))
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
        write(storage, WriteBatch(seed=info, hard_state=hard_state))
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
        write(storage, WriteBatch(seed=info, hard_state=info.hard_state))
        assert (storage.first_index(), storage.last_index()) == (7, 15)
        assert storage.snapshot() == info.snapshot
        assert storage.first_user_index() == 7
    finally:
        storage.close()


def test_a_seed_goes_alone_with_a_hard_state(tmp_path: Path) -> None:
    info = inspect_seed(_member_copy(tmp_path))
    hard_state = HardState(term=3, vote=0, commit=15)
    for batch in (
        WriteBatch(seed=info),
        WriteBatch(seed=info, hard_state=hard_state, entries=[noop(16)]),
        WriteBatch(seed=info, hard_state=hard_state, discard_log=True),
    ):
        with pytest.raises(ValueError, match="a seed replaces the database"):
            batch.validate()


def test_the_node_keeps_its_own_metadata(tmp_path: Path) -> None:
    info = inspect_seed(_member_copy(tmp_path))
    storage = _joined(tmp_path)
    try:
        write(storage, WriteBatch(meta={"node_id": b"42", "cluster_id": b"9"}))
        batch = WriteBatch(seed=info, hard_state=info.hard_state, meta={"joined": b"1"})
        write(storage, batch)
        assert storage.meta_items() == {"node_id": b"42", "cluster_id": b"9", "joined": b"1"}
        storage.close()
        storage = Storage.open(tmp_path / "joining")
        assert storage.meta_get("node_id") == b"42" and storage.last_index() == 15
        assert not list(tmp_path.glob("seed.db*"))  # moved into place, not copied
    finally:
        storage.close()


def test_batches_around_a_seed_keep_their_order(tmp_path: Path) -> None:
    info = inspect_seed(_member_copy(tmp_path))
    storage = _joined(tmp_path)
    try:
        before = storage.submit(WriteBatch(entries=[noop(3, term=1)]))
        seeded = storage.submit(WriteBatch(seed=info, hard_state=info.hard_state))
        after = storage.submit(WriteBatch(entries=[noop(16, term=3)]))
        for future in (before, seeded, after):
            future.result(timeout=30)
        assert storage.last_index() == 16 and storage.term(15) == 2
        assert storage.failure is None
    finally:
        storage.close()


def test_reads_running_while_the_database_is_replaced(tmp_path: Path) -> None:
    """Readers on other threads never fail, and see the old log or the new one."""
    info = inspect_seed(_member_copy(tmp_path))
    storage = _joined(tmp_path)
    errors: list[BaseException] = []
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                seen.add(len(storage.read_changes(0, 100, upto=15).bodies))
                storage.idempotency_lookup("k3")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        write(storage, WriteBatch(seed=info, hard_state=info.hard_state))
        deadline = time.monotonic() + 10
        while 14 not in seen and time.monotonic() < deadline and not errors:
            time.sleep(0.001)  # a poll with a deadline: the readers report what they saw
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        storage.close()
    assert errors == []
    assert 14 in seen and seen <= {0, 14}


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


def test_a_seed_that_cannot_be_prepared_is_rejected_and_the_log_kept(tmp_path: Path) -> None:
    info = inspect_seed(_member_copy(tmp_path))
    storage = _joined(tmp_path)
    try:
        unusable = dataclasses.replace(info, path=tmp_path)  # a directory, not a file
        with pytest.raises(BatchRejected, match="could not be prepared"):
            write(storage, WriteBatch(seed=unusable, hard_state=info.hard_state))
        assert storage.failure is None and storage.last_index() == 2
        append(storage, noop(3))
        assert storage.last_index() == 3
    finally:
        storage.close()
