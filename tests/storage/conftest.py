"""Helpers for the storage tests: building changes and opening storages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest

from changeagent.raft.entry import ENTRY_TYPE_NOOP, Entry
from changeagent.storage import Storage, WriteBatch

TS_BASE_NS = 1_700_000_000_000_000_000
TAIL_SIZES = {"no-tail": 0, "small-tail": 2_000, "big-tail": 64 * 1024 * 1024}


def change(
    index: int,
    term: int = 1,
    *,
    type: int = 0,
    tags: Sequence[str] = (),
    ts: int | None = None,
    key: str = "",
    data: object = None,
) -> Entry:
    """A user change in its wire form, as the leader builds it."""
    document: dict[str, object] = {"_id": index, "_ts": TS_BASE_NS + index if ts is None else ts}
    if type:
        document["type"] = type
    if tags:
        document["tags"] = list(tags)
    document["data"] = {"n": index} if data is None else data
    return Entry(index=index, term=term, type=type, data=orjson.dumps(document), key=key)


def noop(index: int, term: int = 1) -> Entry:
    return Entry(index=index, term=term, type=ENTRY_TYPE_NOOP, data=b"")


def write(storage: Storage, batch: WriteBatch) -> None:
    storage.submit(batch).result(timeout=30)


def append(storage: Storage, *entries: Entry) -> None:
    write(storage, WriteBatch(entries=list(entries)))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(params=list(TAIL_SIZES), ids=list(TAIL_SIZES))
def tail_bytes(request: pytest.FixtureRequest) -> int:
    return TAIL_SIZES[request.param]


@pytest.fixture
def storage(data_dir: Path, tail_bytes: int) -> Iterator[Storage]:
    """A fresh storage, once with no tail, a tiny tail, and a tail holding everything."""
    opened = Storage.open(data_dir, tail_cache_bytes=tail_bytes)
    yield opened
    opened.close()
