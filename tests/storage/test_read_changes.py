"""Change reads for the HTTP API: paging, atStart/atEnd, filters, commit bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from changeagent.storage import Storage, WriteBatch

from .conftest import TS_BASE_NS, append, change, noop, write


def _fill(storage: Storage) -> None:
    """Noops at 1 and 11; changes elsewhere up to 22: odd indices tagged "odd",
    multiples of 5 tagged "five", multiples of 3 of type 3."""
    entries = []
    for index in range(1, 23):
        if index in (1, 11):
            entries.append(noop(index))
            continue
        tags = ["odd"] if index % 2 else []
        if index % 5 == 0:
            tags.append("five")
        entries.append(change(index, type=3 if index % 3 == 0 else 0, tags=tags))
    append(storage, *entries)


def _ids(bodies: list[bytes]) -> list[int]:
    import orjson

    return [orjson.loads(body)["_id"] for body in bodies]


USER_IDS = [index for index in range(2, 23) if index != 11]


def test_paging_through_everything(storage: Storage) -> None:
    _fill(storage)
    since, seen = 0, []
    while True:
        page = storage.read_changes(since, 4, (), None, 22)
        assert len(page.bodies) <= 4
        seen += _ids(page.bodies)
        assert page.at_start == (since == 0)
        since = page.last_index
        if page.at_end:
            break
    assert seen == USER_IDS
    assert since == 22


def test_at_end_exactly_at_the_limit(storage: Storage) -> None:
    _fill(storage)
    page = storage.read_changes(18, 4, (), None, 22)
    assert _ids(page.bodies) == [19, 20, 21, 22]
    assert page.at_end
    page = storage.read_changes(17, 4, (), None, 22)
    assert not page.at_end


def test_tags_are_ored(storage: Storage) -> None:
    _fill(storage)
    odd = storage.read_changes(0, 100, ["odd"], None, 22)
    assert _ids(odd.bodies) == [i for i in USER_IDS if i % 2]
    either = storage.read_changes(0, 100, ["five", "odd", "odd"], None, 22)
    assert _ids(either.bodies) == [i for i in USER_IDS if i % 2 or i % 5 == 0]
    assert storage.read_changes(0, 100, ["none"], None, 22).bodies == []


def test_type_filter(storage: Storage) -> None:
    _fill(storage)
    assert _ids(storage.read_changes(0, 100, (), 3, 22).bodies) == [
        i for i in USER_IDS if i % 3 == 0
    ]
    assert _ids(storage.read_changes(0, 100, (), 0, 22).bodies) == [
        i for i in USER_IDS if i % 3
    ]
    assert _ids(storage.read_changes(0, 100, ["odd"], 3, 22).bodies) == [
        i for i in USER_IDS if i % 3 == 0 and i % 2
    ]
    assert storage.read_changes(0, 100, (), 99, 22).bodies == []


def test_at_start(storage: Storage) -> None:
    _fill(storage)
    assert storage.read_changes(0, 1, (), None, 22).at_start
    assert storage.read_changes(1, 1, (), None, 22).at_start  # only a noop at or below 1
    assert not storage.read_changes(2, 1, (), None, 22).at_start
    assert storage.read_changes(2, 1, ["odd"], None, 22).at_start  # 2 is not odd
    assert not storage.read_changes(3, 1, ["odd"], None, 22).at_start
    assert storage.read_changes(4, 1, ["five"], None, 22).at_start
    assert storage.read_changes(2, 1, (), 3, 22).at_start  # first type 3 is 3
    assert not storage.read_changes(3, 1, (), 3, 22).at_start
    assert storage.read_changes(14, 1, ["five"], 3, 22).at_start  # 15 is the first
    assert not storage.read_changes(15, 1, ["five"], 3, 22).at_start


def test_upto_bounds_every_read(storage: Storage) -> None:
    _fill(storage)
    page = storage.read_changes(0, 100, (), None, 10)
    assert _ids(page.bodies) == list(range(2, 11))
    assert page.at_end
    assert storage.read_changes(10, 100, (), None, 10).bodies == []
    assert storage.read_changes(10, 100, (), None, 10).at_end
    assert storage.read_changes(0, 100, (), None, 1000).bodies  # clamped to last index
    assert storage.get_change(12, upto=10) is None
    assert storage.get_change(10, upto=10) == change(10, tags=["five"]).data


def test_limit_zero_reports_whether_more_exist(storage: Storage) -> None:
    _fill(storage)
    page = storage.read_changes(5, 0, (), None, 22)
    assert page.bodies == [] and page.last_index == 5 and not page.at_end
    assert storage.read_changes(22, 0, (), None, 22).at_end


def test_get_change(storage: Storage) -> None:
    _fill(storage)
    assert storage.get_change(2) == change(2).data
    assert storage.get_change(1) is None  # internal
    assert storage.get_change(11) is None  # internal
    assert storage.get_change(0) is None
    assert storage.get_change(23) is None  # unknown
    write(storage, WriteBatch(compact_to=5))
    assert storage.get_change(5) is None  # purged
    assert storage.get_change(6) is not None


def test_purged_history_is_reported(storage: Storage) -> None:
    _fill(storage)
    write(storage, WriteBatch(compact_to=12))
    page = storage.read_changes(3, 2, (), None, 22)
    assert _ids(page.bodies) == [13, 14]
    assert page.first_retained == 13
    assert page.compacted_through == 12
    assert page.at_start  # nothing retained at or below 3


def test_idempotency_keys(storage: Storage) -> None:
    append(storage, change(1, key="a"), change(2), change(3, key="b"))
    assert storage.idempotency_lookup("a") == 1
    assert storage.idempotency_lookup("b") == 3
    assert storage.idempotency_lookup("c") is None
    append(storage, change(4, key="a"))  # a duplicate key keeps the original index
    assert storage.idempotency_lookup("a") == 1


def test_counts_and_first_user_index(storage: Storage) -> None:
    assert storage.first_user_index() == 0
    _fill(storage)
    assert storage.first_user_index() == 2
    assert storage.count_user_changes_after(0) == len(USER_IDS)
    assert storage.count_user_changes_after(20) == 2


def test_purge_point(data_dir: Path) -> None:
    with Storage.open(data_dir) as storage:
        entries = [noop(1)] + [change(index, ts=index * 10) for index in range(2, 12)]
        append(storage, *entries)
        # Keep >= 3: the 3 newest are 9, 10, 11, so at most 8.
        assert storage.purge_point(3, 10**9, 11) == 8
        # Only changes with ts < 55 (indices 2..5) may go.
        assert storage.purge_point(3, 55, 11) == 5
        assert storage.purge_point(3, 10, 11) == 1  # nothing is old: only the noop
        assert storage.purge_point(20, 10**9, 11) == 0  # too few changes
        assert storage.purge_point(0, 10**9, 7) == 7  # bounded by upto
        assert storage.purge_point(2, 10**9, 7) == 5


def test_timestamps_and_tags_are_derived_from_the_body(data_dir: Path) -> None:
    import sqlite3

    with Storage.open(data_dir) as storage:
        append(storage, change(1, tags=["x", "y", "x"], ts=TS_BASE_NS + 5))
        append(storage, change(2, data=[1, 2]), noop(3))
    connection = sqlite3.connect(data_dir / "changeagent.db")
    try:
        assert connection.execute("SELECT idx, ts FROM entries ORDER BY idx").fetchall() == [
            (1, TS_BASE_NS + 5), (2, TS_BASE_NS + 2), (3, 0)
        ]
        assert connection.execute("SELECT tag, idx FROM tags").fetchall() == [
            ("x", 1), ("y", 1)
        ]
    finally:
        connection.close()


@pytest.mark.parametrize("body", [b"not json", b"[1,2]", b'{"_ts":"x","tags":"a"}'])
def test_odd_bodies_are_stored_as_they_are(data_dir: Path, body: bytes) -> None:
    from changeagent.raft.entry import Entry

    with Storage.open(data_dir) as storage:
        append(storage, Entry(1, 1, 0, body))
        assert storage.get_change(1) == body
        assert storage.read_changes(0, 10, ["a"], None, 1).bodies == []
