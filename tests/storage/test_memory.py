"""Memory does not grow with the number of stored changes: only the tail is held,
and its real size stays close to its byte budget."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from changeagent.storage import Storage, WriteBatch

from .conftest import change

TAIL_BYTES = 1024 * 1024


def _python_bytes_after_writing(storage: Storage, low: int, high: int) -> int:
    for start in range(low, high, 500):
        batch = WriteBatch(entries=[change(index) for index in range(start, start + 500)])
        storage.submit(batch).result(timeout=30)
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_python_memory_is_bounded_by_the_tail_budget(data_dir: Path) -> None:
    tracemalloc.start()
    try:
        with Storage.open(data_dir, tail_cache_bytes=TAIL_BYTES) as storage:
            baseline = _python_bytes_after_writing(storage, 1, 2_001)
            after_10k = _python_bytes_after_writing(storage, 2_001, 12_001)
            after_20k = _python_bytes_after_writing(storage, 12_001, 22_001)
            assert storage.stats()["tail_bytes"] <= TAIL_BYTES
    finally:
        tracemalloc.stop()
    # The tail fills up to its budget, then memory stays flat. (Bodies from
    # orjson keep a 4 KiB buffer each: holding them would cost ~40 MiB here.)
    assert after_10k - baseline < 2 * TAIL_BYTES
    assert abs(after_20k - after_10k) < TAIL_BYTES // 4
