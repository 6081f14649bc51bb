"""`python -m bench.cpu_per_write`: the CPU one write costs, per process and thread.

Starts each system as the bench does (3 members by default), writes one change at a
time from one client (the bench's asyncio client, after warm-up writes), and prints
the median latency and, from /proc, the user and system CPU microseconds per write
of every member and of each of its busy threads, beside etcd's. On two cores a
3-member write's processes share the CPU, so CPU per write bounds latency as much as
the network and the disk do.

    python -m bench.cpu_per_write                         # changeagent and etcd, 3 members
    python -m bench.cpu_per_write --systems changeagent --members 1 --writes 5000
    python -m bench.cpu_per_write --via-follower          # 3 members, posted to a follower

What it showed is in docs/BENCHMARKS.md, "Where a 1-client write's time goes".
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass

import psutil

from bench import procs
from bench.procs import PROCESSES
from bench.systems import SYSTEMS
from bench.systems.base import System

BUSY_US_MIN = 5.0  # threads below this per write are left out of the listing


@dataclass
class Sample:
    process_s: list[float]  # user + system, per member
    threads_s: list[dict[int, tuple[float, float]]]  # per member: thread id -> (user, system)


def _sample(pids: list[int]) -> Sample:
    process_s, threads_s = [], []
    for pid in pids:
        process = psutil.Process(pid)
        times = process.cpu_times()
        process_s.append(times.user + times.system)
        threads_s.append({t.id: (t.user_time, t.system_time) for t in process.threads()})
    return Sample(process_s, threads_s)


async def write_one_at_a_time(
    system: System, count: int, first: int, member: int | None
) -> list[float]:
    """Post `count` changes one after another on one connection; their latencies."""
    connection = await system.connect(member)
    latencies = []
    for sequence in range(first, first + count):
        started = time.perf_counter()
        await system.write(connection, sequence)
        latencies.append(time.perf_counter() - started)
    return latencies


def _measure(name: str, members: int, writes: int, warmup: int, via_follower: bool) -> list[str]:
    system = SYSTEMS[name](PROCESSES, members)
    system.start()
    try:
        leader = system.leader_index() if members > 1 else 0
        member = system.follower_index() if via_follower else None
        asyncio.run(write_one_at_a_time(system, warmup, 0, member))
        pids = system.pids()
        before = _sample(pids)
        latencies = asyncio.run(write_one_at_a_time(system, writes, warmup, member))
        after = _sample(pids)
    finally:
        system.stop()
    spent = zip(after.process_s, before.process_s, strict=True)
    per_write = [(a - b) * 1e6 / writes for a, b in spent]
    lines = [f"{name}: p50 {statistics.median(latencies) * 1000:.3f} ms, CPU per write "
             f"{sum(per_write):.0f} us in all"]
    for index, pid in enumerate(pids):
        role = "leader" if index == leader else "follower"
        if member is not None and index == member:
            role += ", posted to"
        threads = []
        for tid, (user, system_s) in after.threads_s[index].items():
            user0, system0 = before.threads_s[index].get(tid, (0.0, 0.0))
            user_us = (user - user0) * 1e6 / writes
            system_us = (system_s - system0) * 1e6 / writes
            if user_us + system_us >= BUSY_US_MIN:
                label = "main" if tid == pid else f"thread {tid}"
                threads.append(f"{label} {user_us:.0f}+{system_us:.0f}")
        lines.append(f"  member {index} ({role}): {per_write[index]:.0f} us "
                     f"(user+system: {', '.join(threads)})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_per_write", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="changeagent,etcd")
    parser.add_argument("--members", type=int, choices=(1, 3), default=3)
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2,
                        help="measure each system this many times, in turn")
    parser.add_argument("--via-follower", action="store_true",
                        help="post every write to a follower (3 members): the forwarded path")
    arguments = parser.parse_args(argv)
    if arguments.via_follower and arguments.members == 1:
        parser.error("--via-follower needs --members 3")
    names = [name for name in arguments.systems.split(",") if name]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown:
        print(f"unknown systems: {', '.join(unknown)}", file=sys.stderr)
        return 2
    procs.measure_in_turn(
        names, arguments.rounds, lambda name: SYSTEMS[name].missing_reason(),
        lambda name: "\n".join(_measure(name, arguments.members, arguments.writes,
                                        arguments.warmup, arguments.via_follower)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
