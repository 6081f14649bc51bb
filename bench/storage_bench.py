"""Storage micro-benchmark: group-committed appends and change-page reads.

    .venv/bin/python bench/storage_bench.py [--entries N] [--rss]

Appends: C concurrent asyncio submitters each await `Storage.write` of one
~100-byte change at a time (what the node does per proposal), so the writer
thread groups whatever arrives during each fsync. Reads: pages of 100 via
`read_changes`, from SQLite (tail disabled) and from the in-memory tail, with
and without a tag filter. `--rss` instead stores 1,000,000 changes and reports
RSS before and after (the tail is bounded, so RSS must not track the count),
in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil

from changeagent.raft.entry import ENTRY_TYPE_NOOP, Entry
from changeagent.storage import TAIL_CACHE_BYTES_DEFAULT, Storage, WriteBatch

TS_BASE_NS = 1_700_000_000_000_000_000


def _change(index: int) -> Entry:
    document = {
        "_id": index,
        "_ts": TS_BASE_NS + index,
        "tags": ["even" if index % 2 == 0 else "odd"] + (["rare"] if index % 100 == 0 else []),
        "data": {"user": f"u{index % 1000}", "value": index, "pad": "x" * 20},
    }
    return Entry(index=index, term=1, type=0, data=orjson.dumps(document))


async def _append_run(storage: Storage, submitters: int, total: int) -> tuple[float, list[float]]:
    next_index = storage.last_index() + 1
    latencies: list[float] = []
    per_submitter = total // submitters

    async def submitter() -> None:
        nonlocal next_index
        for _ in range(per_submitter):
            index = next_index  # allocated synchronously on the loop: in order
            next_index += 1
            started = time.perf_counter()
            await storage.write(WriteBatch(entries=[_change(index)]))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(submitters)))
    return time.perf_counter() - started, latencies


def bench_appends(directory: Path, total: int) -> None:
    print("appends (one ~100-byte change per write, group-committed, fsync per commit)")
    for submitters in (1, 16, 64, 256):
        data_dir = directory / f"append-{submitters}"
        count = total if submitters > 1 else max(total // 5, 500)
        with Storage.open(data_dir) as storage:
            storage.submit(WriteBatch(entries=[Entry(1, 1, ENTRY_TYPE_NOOP, b"")])).result()
            commits_before = storage.commit_count
            elapsed, latencies = asyncio.run(_append_run(storage, submitters, count))
            commits = storage.commit_count - commits_before
            latencies.sort()
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
            print(
                f"  {submitters:4d} submitters: {len(latencies) / elapsed:9.0f} entries/s, "
                f"{commits:6d} commits ({len(latencies) / max(commits, 1):6.1f} per commit), "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
            )


def _fill(data_dir: Path, count: int) -> None:
    with Storage.open(data_dir, tail_cache_bytes=0) as storage:
        batch_size = 1000
        futures = []
        for start in range(1, count + 1, batch_size):
            entries = [_change(index) for index in range(start, min(start + batch_size, count + 1))]
            futures.append(storage.submit(WriteBatch(entries=entries), timeout_s=None))
        for future in futures:
            future.result()


def _read_all(storage: Storage, tags: tuple[str, ...], upto: int, pages_max: int) -> float:
    since, changes, pages = 0, 0, 0
    started = time.perf_counter()
    while pages < pages_max:
        page = storage.read_changes(since, 100, tags, None, upto)
        changes += len(page.bodies)
        pages += 1
        since = page.last_index
        if page.at_end:
            since = 0
    return changes / (time.perf_counter() - started)


def bench_reads(directory: Path, count: int) -> None:
    data_dir = directory / "reads"
    _fill(data_dir, count)
    print(f"read_changes, pages of 100, over {count} stored changes")
    for label, tail_bytes in (("sqlite", 0), ("tail  ", 256 * 1024 * 1024)):
        with Storage.open(data_dir, tail_cache_bytes=tail_bytes, tail_warm_bytes=tail_bytes) as s:
            for tags in ((), ("odd",), ("rare",)):
                rate = _read_all(s, tags, count, pages_max=2000)
                name = f"tag={tags[0]}" if tags else "all"
                print(f"  {label} {name:9s}: {rate:10.0f} changes/s")
            started = time.perf_counter()
            for index in range(1, count + 1, max(count // 20000, 1)):
                s.term(index)
            lookups = len(range(1, count + 1, max(count // 20000, 1)))
            print(f"  {label} term():    {lookups / (time.perf_counter() - started):10.0f} /s")


def bench_purge_point(directory: Path, count: int) -> None:
    """First call scans from scratch; later calls only what was appended since."""
    data_dir = directory / "reads"
    with Storage.open(data_dir, tail_cache_bytes=0) as storage:
        keep = count // 2
        cutoff = TS_BASE_NS + count  # every stored change is old enough
        started = time.perf_counter()
        point = storage.purge_point(keep, cutoff, count)
        first_ms = (time.perf_counter() - started) * 1000
        entries = [_change(index) for index in range(count + 1, count + 1001)]
        storage.submit(WriteBatch(entries=entries)).result()
        started = time.perf_counter()
        storage.purge_point(keep, cutoff + 1000, count + 1000)
        next_ms = (time.perf_counter() - started) * 1000
        print(
            f"purge_point keeping {keep} of {count}: first call {first_ms:.1f} ms "
            f"(point {point}), after 1,000 more appends {next_ms:.2f} ms"
        )


def bench_rss(directory: Path) -> None:
    process = psutil.Process()
    data_dir = directory / "rss"
    with Storage.open(data_dir, tail_cache_bytes=TAIL_CACHE_BYTES_DEFAULT) as storage:
        empty = process.memory_info().rss
        for start in range(1, 1_000_001, 1000):
            entries = [_change(index) for index in range(start, start + 1000)]
            storage.submit(WriteBatch(entries=entries), timeout_s=None).result()
        for since in range(0, 1_000_000, 50_000):
            storage.read_changes(since, 100, ("rare",), None, 1_000_000)
        full = process.memory_info().rss
        print(
            f"RSS: empty {empty / 2**20:.1f} MiB, with 1,000,000 changes {full / 2**20:.1f} MiB "
            f"(tail {storage.stats()['tail_bytes'] / 2**20:.1f} MiB of a 16 MiB budget)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000, help="appends per run")
    parser.add_argument("--stored", type=int, default=200_000, help="changes for read runs")
    parser.add_argument(
        "--rss", action="store_true",
        help="only store 1M changes and report RSS (a fresh process: earlier runs' memory "
        "would hide the difference)",
    )
    parser.add_argument(
        "--switch-interval-ms", type=float, default=None,
        help="sys.setswitchinterval for the run (default: Python's 5 ms)",
    )
    parser.add_argument("--skip-reads", action="store_true", help="appends only")
    arguments = parser.parse_args()
    if arguments.switch_interval_ms is not None:
        sys.setswitchinterval(arguments.switch_interval_ms / 1000)
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as directory:
        if arguments.rss:
            bench_rss(Path(directory))
            return
        bench_appends(Path(directory), arguments.entries)
        if not arguments.skip_reads:
            bench_reads(Path(directory), arguments.stored)
            bench_purge_point(Path(directory), arguments.stored)


if __name__ == "__main__":
    main()
