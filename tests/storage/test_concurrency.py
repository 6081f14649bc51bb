"""Readers on other threads while the writer truncates and compacts: every read
is self-consistent and no race is ever mistaken for corruption."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import orjson
import pytest

from changeagent.raft.entry import Entry
from changeagent.raft.interfaces import Compacted, Unavailable
from changeagent.storage import Storage, WriteBatch

from .conftest import change


def _entry(index: int, term: int) -> Entry:
    return change(index, term, tags=["even"] if index % 2 == 0 else [], data={"term": term})


def _check_entries(entries: list[Entry], low: int) -> None:
    assert [entry.index for entry in entries] == list(range(low, low + len(entries)))
    for previous, entry in itertools.pairwise(entries):
        assert previous.term <= entry.term
    for entry in entries:
        assert orjson.loads(entry.data)["data"]["term"] == entry.term


def _reader(storage: Storage, done: threading.Event, errors: list[BaseException]) -> None:
    rounds = 0
    while not done.is_set() or rounds < 5:
        rounds += 1
        try:
            first, last = storage.first_index(), storage.last_index()
            if last >= first:
                _check_entries(storage.entries(first, last + 1, 1 << 30), first)
                middle = (first + last) // 2
                assert storage.term(middle) >= 1
            page = storage.read_changes(first - 1, 50, ["even"], None, last)
            ids = [orjson.loads(body)["_id"] for body in page.bodies]
            assert ids == sorted(ids) and all(index % 2 == 0 for index in ids)
        except (Compacted, Unavailable):
            pass  # the bounds moved between two calls: allowed
        except BaseException as error:
            errors.append(error)
            return


@pytest.mark.parametrize("tail_bytes", [0, 4_000, 1 << 26])
def test_reads_race_truncation_and_compaction(data_dir: Path, tail_bytes: int) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    with Storage.open(data_dir, tail_cache_bytes=tail_bytes) as storage:
        readers = [
            threading.Thread(target=_reader, args=(storage, done, errors)) for _ in range(2)
        ]
        for reader in readers:
            reader.start()
        last, term = 0, 1
        try:
            for round_number in range(40):
                term += 1
                new = [_entry(index, term) for index in range(last + 1, last + 21)]
                storage.submit(WriteBatch(entries=new)).result(timeout=30)
                last = new[-1].index
                term += 1  # replace the newest 5 entries, as a new leader would
                replaced = [_entry(index, term) for index in range(last - 4, last + 1)]
                storage.submit(WriteBatch(entries=replaced)).result(timeout=30)
                if round_number % 3 == 2:
                    storage.submit(WriteBatch(compact_to=last - 30)).result(timeout=30)
        finally:
            done.set()
            for reader in readers:
                reader.join(timeout=60)
        assert not errors, errors
        assert storage.failure is None
