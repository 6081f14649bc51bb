"""read_changes_in_memory answers exactly like read_changes, or not at all."""

from __future__ import annotations

import itertools

from changeagent.storage import Storage
from tests.storage.conftest import append, change, noop


def test_in_memory_pages_equal_sqlite_pages(storage: Storage, tail_bytes: int) -> None:
    entries = [noop(1)]
    for index in range(2, 120):
        entries.append(
            change(index, tags=("even",) if index % 2 == 0 else ("odd", f"t{index % 7}"))
        )
    append(storage, *entries)
    answered = 0
    answered_sinces: set[int] = set()
    filters: list[tuple[str, ...]] = [(), ("even",), ("t3",), ("odd", "t2"), ("missing",)]
    for since, limit, tags, type_ in itertools.product(
        [0, 1, 5, 60, 117, 119, 200], [1, 3, 100], filters, [None, 0, 5]
    ):
        in_memory = storage.read_changes_in_memory(since, limit, tags, type_, upto=110)
        if in_memory is None:
            continue
        answered += 1
        answered_sinces.add(since)
        assert in_memory == storage.read_changes(since, limit, tags, type_, upto=110), (
            since,
            limit,
            tags,
            type_,
        )
    if tail_bytes >= 1024 * 1024:  # the whole log fits: memory answers most questions
        assert answered >= 150
    if tail_bytes == 0:  # no tail: only "nothing after since" can be known without SQLite
        assert answered_sinces <= {117, 119, 200}


def test_in_memory_read_declines_below_the_tail(data_dir) -> None:  # type: ignore[no-untyped-def]
    with Storage.open(data_dir, tail_cache_bytes=2_000) as storage:
        append(storage, noop(1), *(change(index) for index in range(2, 200)))
        assert storage.read_changes_in_memory(0, 10) is None
        near_end = storage.read_changes_in_memory(195, 10)
        assert near_end is not None
        assert near_end == storage.read_changes(195, 10)
        assert len(near_end.bodies) == 4
