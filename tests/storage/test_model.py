"""Property test: any sequence of appends, truncations and compactions, then any
read, gives what a plain in-memory model of the log gives."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from changeagent.raft.entry import Entry
from changeagent.raft.interfaces import Compacted, Unavailable
from changeagent.storage import Storage, WriteBatch

from .conftest import change, noop

TAGS = ["a", "b", "c"]


@dataclass(frozen=True)
class Append:
    count: int
    rewind: int  # start this many entries before last_index + 1 (a truncation)
    seed: int


@dataclass(frozen=True)
class Compact:
    keep: int  # compact up to last_index - keep


operations = st.lists(
    st.one_of(
        st.builds(
            Append,
            count=st.integers(1, 12),
            rewind=st.integers(0, 4) | st.just(0),
            seed=st.integers(0, 1 << 30),
        ),
        st.builds(Compact, keep=st.integers(0, 10)),
    ),
    min_size=1,
    max_size=8,
)
queries = st.lists(
    st.tuples(
        st.integers(0, 80),  # since
        st.integers(0, 12),  # limit
        st.lists(st.sampled_from([*TAGS, "zz"]), max_size=2),
        st.none() | st.integers(0, 2),  # type
        st.integers(0, 80),  # upto
    ),
    min_size=1,
    max_size=6,
)


def _entry(index: int, term: int, seed: int) -> Entry:
    kind = (seed + index * 7) % 11
    if kind == 0:
        return noop(index, term)
    tags = [tag for bit, tag in enumerate(TAGS) if (seed >> (index % 9 + bit)) & 1]
    return change(index, term, type=kind % 3, tags=tags, key=f"k{seed % 5}-{index}")


class Model:
    def __init__(self) -> None:
        self.entries: dict[int, tuple[Entry, tuple[str, ...]]] = {}
        self.snapshot_index = 0
        self.last_index = 0
        self.term = 1

    def batch(self, operation: Append | Compact) -> WriteBatch | None:
        if isinstance(operation, Compact):
            target = self.last_index - operation.keep
            if target <= self.snapshot_index:
                return None
            for index in range(self.snapshot_index + 1, target + 1):
                del self.entries[index]
            self.snapshot_index = target
            return WriteBatch(compact_to=target)
        first = max(self.last_index + 1 - operation.rewind, self.snapshot_index + 1)
        self.term += 1
        new = [_entry(index, self.term, operation.seed) for index in
               range(first, first + operation.count)]
        for index in range(first, self.last_index + 1):
            del self.entries[index]
        for entry in new:
            tags = tuple(_tags(entry))
            self.entries[entry.index] = (entry, tags)
        self.last_index = new[-1].index
        return WriteBatch(entries=new)

    def page(
        self, since: int, limit: int, tags: list[str], entry_type: int | None, upto: int
    ) -> tuple[list[bytes], bool, bool]:
        def matches(entry: Entry, entry_tags: tuple[str, ...]) -> bool:
            return (
                entry.type >= 0
                and (entry_type is None or entry.type == entry_type)
                and (not tags or bool(set(tags) & set(entry_tags)))
            )

        ordered = [self.entries[index] for index in sorted(self.entries)]
        after = [e for e, t in ordered if since < e.index <= upto and matches(e, t)]
        at_or_below = [e for e, t in ordered if e.index <= since and matches(e, t)]
        return [e.data for e in after[:limit]], not at_or_below, len(after) <= limit


def _tags(entry: Entry) -> list[str]:
    import orjson

    if entry.type < 0:
        return []
    tags: list[str] = orjson.loads(entry.data).get("tags", [])
    return tags


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    operations=operations,
    queries=queries,
    tail_bytes=st.sampled_from([0, 1_500, 1 << 26]),
    scan_max=st.sampled_from([1, 5, 1024]),
)
def test_storage_matches_model(
    operations: list[Append | Compact],
    queries: list[tuple[int, int, list[str], int | None, int]],
    tail_bytes: int,
    scan_max: int,
) -> None:
    model = Model()
    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory) / "data"
        with Storage.open(
            data_dir, tail_cache_bytes=tail_bytes, tail_scan_entries_max=scan_max
        ) as storage:
            futures = [
                storage.submit(batch)
                for batch in (model.batch(operation) for operation in operations)
                if batch is not None
            ]
            for future in futures:
                future.result(timeout=30)
            _check(storage, model, queries)
        # And again from disk alone.
        with Storage.open(
            data_dir, tail_cache_bytes=tail_bytes, tail_scan_entries_max=scan_max
        ) as storage:
            _check(storage, model, queries)


def _check(
    storage: Storage,
    model: Model,
    queries: list[tuple[int, int, list[str], int | None, int]],
) -> None:
    assert storage.first_index() == model.snapshot_index + 1
    assert storage.last_index() == model.last_index
    expected = [model.entries[index][0] for index in sorted(model.entries)]
    assert storage.entries(storage.first_index(), model.last_index + 1, 1 << 30) == expected
    for entry in expected:
        assert storage.term(entry.index) == entry.term
        assert storage.get_change(entry.index) == (entry.data if entry.type >= 0 else None)
        if entry.key:
            assert storage.idempotency_lookup(entry.key) == entry.index
    if model.snapshot_index > 1:  # index 0 always has term 0
        try:
            storage.term(model.snapshot_index - 1)
            raise AssertionError("expected Compacted")
        except Compacted:
            pass
    try:
        storage.term(model.last_index + 1)
        raise AssertionError("expected Unavailable")
    except Unavailable:
        pass
    users = [entry.index for entry in expected if entry.type >= 0]
    assert storage.first_user_index() == (users[0] if users else 0)
    for since, limit, tags, entry_type, upto in queries:
        page = storage.read_changes(since, limit, tags, entry_type, upto)
        bodies, at_start, at_end = model.page(since, limit, tags, entry_type, upto)
        assert page.bodies == bodies, (since, limit, tags, entry_type, upto)
        assert page.at_start == at_start, (since, limit, tags, entry_type, upto)
        assert page.at_end == at_end, (since, limit, tags, entry_type, upto)
        assert len(page.bodies) <= limit
