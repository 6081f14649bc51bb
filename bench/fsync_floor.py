"""`python -m bench.fsync_floor`: what the disk under the data directory costs a write.

Each of 1 or 3 processes (the members of a cluster on one machine) writes what one
small SQLite WAL commit writes (1, 2 or 4 frames: a 24-byte header and a 4 KiB page
each, into a file already written once, as a reused WAL is) and then `fdatasync`s,
over and over. With 3 processes a barrier starts each round in all of them at
once, as one replicated write starts the three fsyncs within ~0.1 ms. It prints
the median (and mean) of each process's write + fdatasync, in ms.

Each setting is measured back to back (the next write the moment the last one is
durable: what a loaded server sees) and at a rhythm (`--periods-us`: one round
every so many µs, sleeping in between: what one client's writes see, one per
round trip). On a virtual machine the two can differ tenfold: on this project's
2-vCPU machine an fdatasync took ~0.05 ms back to back and 0.2-0.7 ms at one every
millisecond, each either fast or slow, the slow ones the more often the longer the
disk was idle (docs/BENCHMARKS.md, "Issue 15: the fsync at one client's rhythm").

    python -m bench.fsync_floor                    # in the bench's data root
    python -m bench.fsync_floor --dir /mnt/disk --rounds 2000
    python -m bench.fsync_floor --periods-us 0,300,700,1000

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
PERIODS_US = (0, 1000)  # 0: back to back


def _writer(
    path: Path, frames: int, rounds: int, period_s: float, start: Barrier | None, results: object
) -> None:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, b"\1" * FILE_BYTES)  # written once: later writes overwrite
        os.fsync(descriptor)
        header, page = os.urandom(FRAME_HEADER_BYTES), os.urandom(PAGE_BYTES)
        frame_bytes = FRAME_HEADER_BYTES + PAGE_BYTES
        offset, seconds = 32, []
        last_started = time.perf_counter()
        for _ in range(rounds):
            if period_s:  # the rest of the period since the last round started
                time.sleep(max(0.0, last_started + period_s - time.perf_counter()))
            if start is not None:
                start.wait()
            started = last_started = time.perf_counter()
            for _ in range(frames):
                os.pwrite(descriptor, header, offset)
                os.pwrite(descriptor, page, offset + FRAME_HEADER_BYTES)
                offset += frame_bytes
            os.fdatasync(descriptor)
            seconds.append(time.perf_counter() - started)
            if offset + frames * frame_bytes > FILE_BYTES:
                offset = 32
        results.put((statistics.median(seconds), statistics.fmean(seconds)))  # type: ignore[attr-defined]
    finally:
        os.close(descriptor)
        path.unlink()


def measure(
    directory: Path, processes: int, frames: int, rounds: int, period_s: float = 0.0
) -> list[tuple[float, float]]:
    """Each process's median and mean write + fdatasync, in seconds, sorted;
    `period_s`: one round that often (0: back to back)."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = context.Barrier(processes) if processes > 1 else None
    workers = [
        context.Process(
            target=_writer,
            args=(directory / f"wal-{n}", frames, rounds, period_s, start, results),
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
    parser.add_argument(
        "--periods-us",
        type=_periods,
        default=PERIODS_US,
        help="comma-separated: one round every so many µs, 0 back to back (default 0,1000)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cabench-fsync-", dir=args.dir) as name:
        directory = Path(name)
        print(f"fdatasync floor in {directory} ({args.rounds} rounds per process)")
        for period_us in args.periods_us:
            print("  back to back:" if period_us == 0 else f"  one round every {period_us} µs:")
            for processes in (1, 3):
                for frames in FRAME_COUNTS:
                    results = measure(directory, processes, frames, args.rounds, period_us / 1e6)
                    medians = ", ".join(f"{median * 1000:.3f}" for median, _ in results)
                    means = ", ".join(f"{mean * 1000:.3f}" for _, mean in results)
                    print(
                        f"    {processes} at once, {frames} frames: p50 {medians} ms (mean {means})"
                    )
    return 0


def _periods(text: str) -> tuple[int, ...]:
    try:
        periods = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole µs: {text!r}") from None
    if not periods or any(not 0 <= period <= 1_000_000 for period in periods):
        raise argparse.ArgumentTypeError("each period is 0 to 1,000,000 µs")
    return periods


if __name__ == "__main__":
    raise SystemExit(main())
