"""What a long-poll's reads cost (issue 11, bug 2): the per-commit check reads only
new entries from the tail, atStart taken as known skips SQLite, and a tag filter
with a type is answered by intersecting the two indexes, not by reading every
tagged row."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from changeagent.storage import KnownAtStart, Storage, WriteBatch, schema
from tests.storage.conftest import append, change, noop, write

TAGGED = 3000  # far more than one seek chunk (256) or one IN chunk (500)


class Statements:
    """The SQL run by every reading connection opened while it is installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.run: list[str] = []
        connect_reader = schema.connect_reader

        def traced(data_dir: Path) -> sqlite3.Connection:
            connection = connect_reader(data_dir)
            connection.set_trace_callback(self.run.append)
            return connection

        monkeypatch.setattr(schema, "connect_reader", traced)


@pytest.fixture
def tagged_log(data_dir: Path) -> Iterator[Storage]:
    """TAGGED changes tagged "common" of type 0 after a no-op, and no tail."""
    storage = Storage.open(data_dir, tail_cache_bytes=0)
    entries = [noop(1)] + [change(index, tags=("common",)) for index in range(2, TAGGED + 2)]
    append(storage, *entries)
    yield storage
    storage.close()


def test_a_type_the_tag_never_has_costs_a_seek_or_two(
    tagged_log: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = Statements(monkeypatch)
    last = tagged_log.last_index()
    page = tagged_log.read_changes(last - 5, 10, ["common"], 7, last)
    assert page.bodies == [] and page.at_start and page.at_end
    assert len(statements.run) <= 4, statements.run  # was one per 500 tagged rows, twice
    statements.run.clear()
    assert tagged_log.read_changes(0, 10, ["common"], 7, last).bodies == []
    assert len(statements.run) <= 2, statements.run


def test_tag_and_type_reads_agree_with_a_scan(data_dir: Path) -> None:
    rng = random.Random(11)
    kinds: dict[int, tuple[int, tuple[str, ...]]] = {}
    entries = [noop(1)]
    for index in range(2, 1500):
        tags = tuple(tag for tag in "abc" if rng.random() < 0.3)
        # Runs of one type, so the two indexes interleave in long and short stretches.
        entry_type = rng.choice((0, 1, 2)) if rng.random() < 0.1 else (index // 97) % 3
        kinds[index] = (entry_type, tags)
        entries.append(change(index, type=entry_type, tags=tags))
    with Storage.open(data_dir, tail_cache_bytes=0) as storage:
        append(storage, *entries)
        for _ in range(200):
            since, upto = sorted(rng.sample(range(0, 1502), 2))
            tags = rng.sample("abc", rng.randint(1, 2))
            entry_type = rng.choice((0, 1, 2))
            matching = [
                index
                for index, (kind, its_tags) in kinds.items()
                if kind == entry_type and set(tags) & set(its_tags)
            ]
            limit = rng.choice((1, 7, 300))
            page = storage.read_changes(since, limit, tags, entry_type, upto)
            expected = [index for index in matching if since < index <= upto]
            assert [int(body.split(b",")[0][7:]) for body in page.bodies] == expected[:limit]
            assert page.at_end == (len(expected) <= limit)
            assert page.at_start == (not any(index <= since for index in matching))


def test_the_per_commit_check_reads_the_new_entries_from_the_tail_only(data_dir: Path) -> None:
    with Storage.open(data_dir) as storage:
        entries = [noop(1)] + [change(index, tags=("common",)) for index in range(2, 1000)]
        append(storage, *entries)
        assert storage.has_changes_in_memory(990, 999, ["common"], None) is True
        assert storage.has_changes_in_memory(990, 999, ["common"], 7) is False
        assert storage.has_changes_in_memory(999, 999, ["common"], 7) is False
        assert storage.has_changes_in_memory(5000, 999, ["common"], 7) is False
        # More new entries than one check may look at: a worker thread must tell.
        assert storage.has_changes_in_memory(1, 999, ["common"], 7) is None
        assert storage.has_changes_in_memory(1, 999, ["common"], 0) is True  # found early


def test_the_per_commit_check_declines_what_the_tail_does_not_hold(data_dir: Path) -> None:
    with Storage.open(data_dir, tail_cache_bytes=2_000) as storage:
        append(storage, noop(1), *(change(index, tags=("t",)) for index in range(2, 200)))
        assert storage.has_changes_in_memory(5, 10, ["t"], None) is None
        assert storage.has_changes_in_memory(197, 199, ["t"], None) is True


def test_at_start_taken_as_known_skips_sqlite_until_a_compaction(
    tagged_log: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = Statements(monkeypatch)  # before the first read opens a connection
    storage = tagged_log
    last = storage.last_index()
    found = storage.read_changes(100, 5, ["common"], 0, last)
    assert not found.at_start and statements.run != []
    known = KnownAtStart(found.at_start, found.compacted_through)
    statements.run.clear()
    page = storage.read_changes(last, 5, ["common"], 0, last, at_start=known)
    assert not page.at_start and statements.run == []  # nothing to read, nothing below
    in_memory = storage.read_changes_in_memory(last, 5, ["common"], 0, last, at_start=known)
    assert in_memory == page
    # A compaction can remove every match at or below `since`: false is no longer known.
    write(storage, WriteBatch(compact_to=150))
    assert storage.read_changes(100, 5, ["common"], 0, 100, at_start=known).at_start
    assert statements.run == []  # since is below the first retained change: no look
    assert not storage.read_changes(200, 5, ["common"], 0, 200, at_start=known).at_start
    assert statements.run != []  # asked SQLite again
    # True stays true whatever is compacted.
    statements.run.clear()
    still = KnownAtStart(True, found.compacted_through)
    assert storage.read_changes(last, 5, ["common"], 0, last, at_start=still).at_start
    assert statements.run == []
