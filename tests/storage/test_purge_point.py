"""The incremental purge point equals the from-scratch one, whatever happens between calls."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from changeagent.storage import Storage, WriteBatch
from changeagent.storage.reads import purge_point as purge_point_from_scratch

from .conftest import change, noop

steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 15), st.integers(0, 3)),  # count, rewind
        st.tuples(st.just("compact"), st.integers(0, 1), st.integers(0, 0)),
        st.tuples(
            st.just("ask"),
            st.sampled_from([0, 1, 2, 5, 12]),  # min_records
            st.integers(-3, 20),  # how far the cutoff moves (mostly forward)
        ),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, seed=st.integers(0, 1 << 20))
def test_incremental_purge_point_matches_from_scratch(
    steps: list[tuple[str, int, int]], seed: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory) / "data"
        with Storage.open(data_dir) as storage:
            raw = sqlite3.connect(data_dir / "changeagent.db")
            try:
                _run(storage, raw, steps, seed)
            finally:
                raw.close()


def _run(
    storage: Storage, raw: sqlite3.Connection, steps: list[tuple[str, int, int]], seed: int
) -> None:
    term, cutoff, last_point = 1, 0, 0
    for step_number, (kind, first, second) in enumerate(steps):
        if kind == "append":
            term += 1
            start = max(storage.last_index() + 1 - second, storage.first_index())
            entries = []
            for index in range(start, start + first):
                wobble = ((seed + term * 7919) >> (index % 17)) % 21 - 10  # not monotonic
                if (index * 5 + seed + term) % 9 == 0:
                    entries.append(noop(index, term))
                else:
                    entries.append(change(index, term, ts=index * 10 + wobble))
            storage.submit(WriteBatch(entries=entries)).result(timeout=30)
        elif kind == "compact":
            target = last_point if first == 0 else storage.last_index() // 2
            if storage.first_index() - 1 < target <= storage.last_index():
                storage.submit(WriteBatch(compact_to=target)).result(timeout=30)
        else:
            cutoff += second * 10
            upto = storage.last_index() - (step_number % 3 == 0)
            expected = purge_point_from_scratch(raw, first, cutoff, max(upto, 0))
            last_point = storage.purge_point(first, cutoff, upto)
            assert last_point == expected, (first, cutoff, upto)


def test_truncation_resets_the_remembered_positions(data_dir: Path) -> None:
    with Storage.open(data_dir) as storage:
        storage.submit(
            WriteBatch(entries=[change(index, ts=index * 10) for index in range(1, 11)])
        ).result(timeout=30)
        assert storage.purge_point(2, 1000, 10) == 8  # keep 9 and 10
        assert storage.purge_point(0, 55, 10) == 5  # 6 is the first recent one
        # A new leader rewrites 3..10: mostly no-ops, and recent changes.
        rewritten = [noop(index, 2) for index in range(3, 10)] + [change(10, 2, ts=5000)]
        rewritten[0] = change(3, 2, ts=5000)
        storage.submit(WriteBatch(entries=rewritten)).result(timeout=30)
        assert storage.purge_point(2, 1000, 10) == 2  # keep 3 and 10
        assert storage.purge_point(0, 55, 10) == 2  # 3 is recent now


def test_compaction_keeps_the_remembered_positions_valid(data_dir: Path) -> None:
    with Storage.open(data_dir) as storage:
        storage.submit(
            WriteBatch(entries=[change(index, ts=index * 10) for index in range(1, 21)])
        ).result(timeout=30)
        assert storage.purge_point(5, 150, 20) == 14
        storage.submit(WriteBatch(compact_to=14)).result(timeout=30)
        storage.submit(
            WriteBatch(entries=[change(index, ts=index * 10) for index in range(21, 31)])
        ).result(timeout=30)
        assert storage.purge_point(5, 150, 30) == 14  # 15 is not old enough
        assert storage.purge_point(5, 1000, 30) == 25
