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
    python -m bench.cpu_per_write --no-fsync              # the software path alone
    python -m bench.cpu_per_write --via-follower --clients 256 --seconds 10   # under load

`--clients N` loads each system with wrk instead (N connections, the bench's write
script, for `--seconds`) and divides the CPU by the writes wrk saw acknowledged: where
the CPU goes when writes are batched, which is what bounds the many-client rows on two
cores. The latency printed is then wrk's p50.

`--no-fsync` measures the software path alone (sockets, parsing, Raft, the storage's
work but its fsync): changeagent's members run with SQLite's `synchronous=OFF` (this
module's `serve-no-fsync` entry sets it before the server starts, and each member
leaves a mark that it did, which the run checks), etcd with `--unsafe-no-fsync`.
Neither is durable so: a measurement, never a way to run.

What it showed is in docs/BENCHMARKS.md, "Where a 1-client write's time goes" and
"Issue 15: the fsync at one client's rhythm".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import procs
from bench.procs import PROCESSES, BenchError
from bench.systems import SYSTEMS
from bench.systems.base import System
from bench.systems.changeagent import variant
from bench.systems.etcd import Etcd
from bench.wrk import run_wrk

BUSY_US_MIN = 5.0  # threads below this per write are left out of the listing
MARKS_VARIABLE = "CPU_PER_WRITE_NO_FSYNC_MARKS"  # where each member marks it has no fsync


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


# ------------------------------------------------------------------ without fsync


def serve_no_fsync(argv: list[str]) -> int:
    """A changeagent member whose storage does not fsync: SQLite's `synchronous`
    is OFF for the writing connection. Raises if the storage no longer sets it
    where this expects (a renamed setting must fail this tool, not go unpatched)."""
    from changeagent.cli.main import main as changeagent_main
    from changeagent.storage import schema

    pragmas: dict[str, Any] = schema._WRITER_PRAGMAS
    if pragmas.get("synchronous") != "FULL":
        raise RuntimeError("the storage's writer pragmas changed: update serve_no_fsync")
    pragmas["synchronous"] = "OFF"
    (Path(os.environ[MARKS_VARIABLE]) / str(os.getpid())).write_text("synchronous=OFF")
    return int(changeagent_main(argv) or 0)


class EtcdNoFsync(Etcd):
    """etcd with `--unsafe-no-fsync`."""

    def _argv(self, *arguments: Any) -> list[str]:
        return [*super()._argv(*arguments), "--unsafe-no-fsync"]


NO_FSYNC_SYSTEMS: dict[str, type[System]] = {
    "changeagent": variant("changeagent", [sys.executable, "-m", "bench.cpu_per_write",
                                           "serve-no-fsync"]),
    "etcd": EtcdNoFsync,
}


def _system_class(name: str, no_fsync: bool) -> type[System]:
    return NO_FSYNC_SYSTEMS[name] if no_fsync else SYSTEMS[name]


def _check_marks(name: str, pids: list[int]) -> None:
    """Every changeagent member ran without fsync (its mark is there)."""
    if name != "changeagent":
        return
    marked = {int(path.name) for path in Path(os.environ[MARKS_VARIABLE]).iterdir()}
    if not set(pids) <= marked:
        raise BenchError(f"members {sorted(set(pids) - marked)} ran with fsync")


# ------------------------------------------------------------------ measuring


@dataclass
class Load:
    """How each system is loaded: one client's `writes` in turn, or wrk's `clients`."""

    writes: int
    warmup: int
    clients: int = 1
    seconds: float = 10.0


def _under_wrk(system: System, member: int | None, load: Load) -> tuple[int, float, float]:
    """wrk's acknowledged writes, their p50 (s) and the seconds wrk ran."""
    target = system.wrk_write(member)
    if target is None:
        raise BenchError(f"{system.name} has no wrk write script")
    url, script, env = target
    result = run_wrk(url, script, load.clients, load.seconds,
                     f"cpu-{load.clients}-{time.monotonic_ns()}", env)
    if result["errors"]:
        raise BenchError(f"{system.name}: wrk saw {result['errors']} errors")
    return result["ok"], result["percentiles_us"]["50"] / 1e6, result["seconds"]


def _measure(name: str, members: int, load: Load, via_follower: bool,
             no_fsync: bool = False) -> list[str]:
    system = _system_class(name, no_fsync)(PROCESSES, members)
    system.start()
    try:
        leader = system.leader_index() if members > 1 else 0
        member = system.follower_index() if via_follower else None
        asyncio.run(write_one_at_a_time(system, load.warmup, 0, member))
        pids = system.pids()
        if no_fsync:
            _check_marks(name, pids)
        before = _sample(pids)
        if load.clients > 1:
            writes, p50_s, seconds = _under_wrk(system, member, load)
        else:
            latencies = asyncio.run(write_one_at_a_time(system, load.writes, load.warmup,
                                                        member))
            writes, p50_s = load.writes, statistics.median(latencies)
            seconds = sum(latencies)
        after = _sample(pids)
    finally:
        system.stop()
    spent = zip(after.process_s, before.process_s, strict=True)
    per_write = [(a - b) * 1e6 / writes for a, b in spent]
    label = f"{name}, without fsync" if no_fsync else name
    clients = f"{load.clients} client" + ("s" if load.clients != 1 else "")
    lines = [f"{label}: p50 {p50_s * 1000:.3f} ms, {writes / seconds:,.0f} writes/s "
             f"({clients}), CPU per write {sum(per_write):.0f} us in all, "
             f"{sum(after.process_s) - sum(before.process_s):.2f} CPU-s over {seconds:.1f} s"]
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
    arguments_given = sys.argv[1:] if argv is None else argv
    if arguments_given[:1] == ["serve-no-fsync"]:
        return serve_no_fsync(arguments_given[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_per_write", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="changeagent,etcd")
    parser.add_argument("--members", type=int, choices=(1, 3), default=3)
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--clients", type=int, default=1,
                        help="above 1: load with wrk, this many connections (see above)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long wrk loads each system (with --clients)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measure each system this many times, in turn")
    parser.add_argument("--via-follower", action="store_true",
                        help="post every write to a follower (3 members): the forwarded path")
    parser.add_argument("--no-fsync", action="store_true",
                        help="the software path alone: changeagent without SQLite's fsync, "
                             "etcd with --unsafe-no-fsync (not durable: a measurement)")
    arguments = parser.parse_args(arguments_given)
    if arguments.via_follower and arguments.members == 1:
        parser.error("--via-follower needs --members 3")
    if arguments.clients < 1 or arguments.seconds <= 0:
        parser.error("--clients must be 1 or more and --seconds above 0")
    load = Load(arguments.writes, arguments.warmup, arguments.clients, arguments.seconds)
    names = [name for name in arguments.systems.split(",") if name]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown:
        print(f"unknown systems: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if arguments.no_fsync:
        unknown = [name for name in names if name not in NO_FSYNC_SYSTEMS]
        if unknown:
            parser.error(f"--no-fsync knows changeagent and etcd, not {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="cpu-per-write-") as marks:
        # The members run this module (`serve-no-fsync`): from this tree, marking here.
        os.environ[MARKS_VARIABLE] = marks
        procs.members_import_this_tree()
        procs.measure_in_turn(
            names, arguments.rounds, lambda name: SYSTEMS[name].missing_reason(),
            lambda name: "\n".join(_measure(name, arguments.members, load,
                                            arguments.via_follower, arguments.no_fsync)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
