"""`python -m bench.fsync_floor`: what the disk under the data directory costs a write.

Each of 1 or 3 processes (the members of a cluster on one machine) writes what one
small SQLite WAL commit writes (1, 2 or 4 frames: a 24-byte header and a 4 KiB page
each, into a file already written once, as a reused WAL is) and then `fdatasync`s,
over and over. With 3 processes a barrier starts each round in all of them at
once, as one replicated write starts the three fsyncs within ~0.1 ms. It prints
the median seconds of each process's write + fdatasync, in ms.

    python -m bench.fsync_floor                    # in the bench's data root
    python -m bench.fsync_floor --dir /mnt/disk --rounds 2000

If three simultaneous fsyncs cost about what one does, the disk serves them in
parallel, and a 3-member write that waits longer for its fsyncs waits for the CPU
(docs/BENCHMARKS.md, "Where a 1-client write's time goes").
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

FRAME_HEADER_BYTES = 24
PAGE_BYTES = 4096
FILE_BYTES = 8 * 1024 * 1024
FRAME_COUNTS = (1, 2, 4)


def _writer(path: Path, frames: int, rounds: int, start: Barrier | None, results: object) -> None:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, b"\1" * FILE_BYTES)  # written once: later writes overwrite
        os.fsync(descriptor)
        header, page = os.urandom(FRAME_HEADER_BYTES), os.urandom(PAGE_BYTES)
        frame_bytes = FRAME_HEADER_BYTES + PAGE_BYTES
        offset, seconds = 32, []
        for _ in range(rounds):
            if start is not None:
                start.wait()
            started = time.perf_counter()
            for _ in range(frames):
                os.pwrite(descriptor, header, offset)
                os.pwrite(descriptor, page, offset + FRAME_HEADER_BYTES)
                offset += frame_bytes
            os.fdatasync(descriptor)
            seconds.append(time.perf_counter() - started)
            if offset + frames * frame_bytes > FILE_BYTES:
                offset = 32
        results.put(statistics.median(seconds))  # type: ignore[attr-defined]
    finally:
        os.close(descriptor)
        path.unlink()


def measure(directory: Path, processes: int, frames: int, rounds: int) -> list[float]:
    """Each process's median write + fdatasync, in seconds, sorted."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = context.Barrier(processes) if processes > 1 else None
    workers = [
        context.Process(
            target=_writer, args=(directory / f"wal-{n}", frames, rounds, start, results)
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    medians = sorted(results.get(timeout=600) for _ in workers)
    for worker in workers:
        worker.join(60)
        if worker.exitcode != 0:
            raise RuntimeError(f"a writer failed (exit code {worker.exitcode})")
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fsync_floor", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a temp dir)")
    parser.add_argument("--rounds", type=int, default=600, help="writes per process")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cabench-fsync-", dir=args.dir) as name:
        directory = Path(name)
        print(f"fdatasync floor in {directory} ({args.rounds} rounds per process)")
        for processes in (1, 3):
            for frames in FRAME_COUNTS:
                medians = measure(directory, processes, frames, args.rounds)
                shown = ", ".join(f"{seconds * 1000:.3f}" for seconds in medians)
                print(f"  {processes} at once, {frames} frames: p50 {shown} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
