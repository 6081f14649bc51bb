"""Scenarios e and f: leader failover and a new member catching up.

e. A 3-member cluster takes writes; the leader is killed with SIGKILL; from then on a
   client starts one write attempt every 0.1 s on the surviving members (round robin, a
   fresh connection each, each attempt bounded by 1 s, the election timeout both systems
   run with) until one is acknowledged. Figure: seconds from the kill to the first
   acknowledgement. Attempts overlap so that the figure is not rounded up to whole
   attempt timeouts (one attempt at a time measured 2.0x s whenever the new leader came
   between 1 and 2 s: two attempts had timed out, the third succeeded at once).
f. A 3-member cluster holds N changes; a 4th member is added; figure: N divided by
   the seconds from the add request to the new member serving the last change. The
   cluster is preloaded once: before each further run the previous new member is removed
   (and its data dropped), then a fresh one is added.
   For Redis (single node) the nearest thing is shown: a replica's full sync.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.aioclient import ConnectionClosed
from bench.procs import PROCESSES, BenchError
from bench.scenarios.common import Recorder, Settings, run_async, running
from bench.systems.base import Member, System, WriteFailed, concurrent_writes, retry_write

FAILOVER = "e. failover"
JOIN = "f. new member catch-up"
ATTEMPT_SECONDS = 1.0
ATTEMPT_INTERVAL_SECONDS = 0.1
FAILOVER_SECONDS_MAX = 60.0


def run_failover(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    if system_cls.family == "redis":
        recorder.skip(FAILOVER, "redis", "not applicable: single node (no Raft)")
        return
    for _ in range(settings.failover_runs):
        system = system_cls(PROCESSES, 3)
        with running(system, recorder, FAILOVER) as ok:
            if not ok:
                return
            seconds, attempts = run_async(_failover(system), FAILOVER_SECONDS_MAX + 30)
            recorder.add(FAILOVER, "seconds from kill -9 of the leader to the next "
                         "acknowledged write", system.name, seconds, "s", "lower",
                         attempts=attempts)


async def _failover(system: System) -> tuple[float, int]:
    await concurrent_writes(system, 100, 4, time.monotonic() + 20)
    leader = system.wait_leader(10)
    survivors = [m.index for m in system.members if m.index != leader]
    acknowledged: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    tasks: set[asyncio.Task[None]] = set()

    async def attempt(sequence: int, member: int) -> None:
        try:
            await retry_write(system, sequence, member, ATTEMPT_SECONDS)
        except (TimeoutError, WriteFailed, ConnectionClosed, OSError):
            return
        if not acknowledged.done():
            acknowledged.set_result(time.perf_counter())

    killed_at = time.perf_counter()
    system.kill_member(leader)
    attempts = 0
    try:
        while time.perf_counter() - killed_at < FAILOVER_SECONDS_MAX:
            member = survivors[attempts % len(survivors)]
            attempts += 1
            tasks.add(asyncio.create_task(attempt(attempts, member)))
            done, _ = await asyncio.wait([acknowledged], timeout=ATTEMPT_INTERVAL_SECONDS)
            if done:
                return acknowledged.result() - killed_at, attempts
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    raise BenchError(f"no write acknowledged within {FAILOVER_SECONDS_MAX:.0f} s of the kill")


def run_join(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    """One cluster, preloaded once; each run adds a fresh member and, before the next
    run, removes it again (so N changes are written once, not once per run)."""
    members = 1 if system_cls.family == "redis" else 3
    system = system_cls(PROCESSES, members)
    with running(system, recorder, JOIN) as ok:
        if not ok:
            return
        began = time.monotonic()
        deadline = began + settings.preload_seconds_max
        stored = run_async(system.preload(settings.join_changes, deadline),
                           settings.preload_seconds_max + 60)
        preload_seconds = time.monotonic() - began
        if stored == 0:
            raise BenchError("nothing could be preloaded")
        recorder.log(f"  {system.name:11s} preloaded {stored:,} changes in "
                     f"{preload_seconds:.1f} s ({stored / preload_seconds:,.0f} changes/s)")
        last_cursor = system.last_cursor()
        member: Member | None = None
        for _ in range(settings.join_runs):
            if member is not None:
                system.remove_member(member)
            member = _join_once(system, settings, recorder, stored, last_cursor,
                                preload_seconds)


def _join_once(system: System, settings: Settings, recorder: Recorder, stored: int,
               last_cursor: Any, preload_seconds: float) -> Member:
    member = system.add_member()
    began = member.joined_at
    limit = time.monotonic() + settings.scenario_seconds_max
    while not system.member_has(member, stored - 1, last_cursor):
        if member.process is None or not member.process.alive():
            tail = member.process.log_tail() if member.process else ""
            raise BenchError(f"the new member exited:\n{tail}")
        if time.monotonic() > limit:
            raise BenchError("the new member did not catch up in time")
        time.sleep(0.02)
    seconds = time.perf_counter() - began
    how = "redis replica full sync (not Raft)" if system.family == "redis" else "4th joins 3"
    label = f"changes/s caught up by a new member, {settings.join_changes:,} changes"
    recorder.add(JOIN, label, system.name, stored / seconds, "changes/s", "higher", changes=stored,
                 seconds=round(seconds, 3), how=how, preload_seconds=round(preload_seconds, 1))
    return member
