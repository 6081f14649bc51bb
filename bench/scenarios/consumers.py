"""Scenario i: the consumer side (issue 12), changeagent only.

i1. follow(): one `changeagent.client.Client` reads a node's whole log with
    `follow(stop_at_end=True)` and its default pages (changes/s delivered to the caller,
    parsed into Change objects).
i2. mirror: `changeagent mirror --once` (the real command, a fresh process) makes its
    first copy of the whole log into a new SQLite file (changes/s written, start-up
    included); the file is then checked to hold every change.
Peers have no equivalent tool in this bench, so they are skipped.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from bench.procs import PROCESSES, BenchError, self_cpu_seconds
from bench.scenarios.common import Recorder, Settings, run_async, running
from bench.systems.base import System
from bench.systems.changeagent import LOOPBACK

CONSUMERS = "i. consumers"
MIRROR_SECONDS_MAX = 900.0


def run_consumers(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    if system_cls.family != "changeagent":
        recorder.skip(CONSUMERS, system_cls.name,
                      "not applicable: changeagent's own client and mirror")
        return
    system = system_cls(PROCESSES, 1)
    with running(system, recorder, CONSUMERS) as ok:
        if ok:
            run_async(_consumers(system, settings, recorder), settings.scenario_seconds_max)


async def _consumers(system: System, settings: Settings, recorder: Recorder) -> None:
    deadline = time.monotonic() + settings.preload_seconds_max
    stored = await system.preload(settings.consumer_changes, deadline)
    url = f"http://{LOOPBACK}:{system.members[0].port}"  # type: ignore[attr-defined]
    for _ in range(settings.runs):
        delivered, seconds, cpu = await asyncio.to_thread(follow_everything, url)
        if delivered < stored:
            raise BenchError(f"follow() delivered {delivered} of {stored} changes")
        recorder.add(CONSUMERS, f"changes/s follow() delivers reading {stored:,} changes",
                     system.name, delivered / seconds, "changes/s", "higher",
                     generator_cpu_percent=round(100 * cpu / seconds, 1), changes=delivered)
        program = system.node_command()  # type: ignore[attr-defined]
        written, seconds = await asyncio.to_thread(mirror_everything, url, program)
        if written < stored:
            raise BenchError(f"the mirror holds {written} of {stored} changes")
        recorder.add(CONSUMERS, f"changes/s `changeagent mirror` writes, first sync of "
                     f"{stored:,} changes", system.name, written / seconds, "changes/s",
                     "higher", changes=written)


def follow_everything(url: str) -> tuple[int, float, float]:
    """(changes delivered, seconds, this process's CPU seconds)."""
    from changeagent.client import Client

    delivered = 0
    cpu_before = self_cpu_seconds()
    began = time.perf_counter()
    with Client(url) as client:
        for _change in client.follow(stop_at_end=True):
            delivered += 1
    return delivered, time.perf_counter() - began, self_cpu_seconds() - cpu_before


def mirror_everything(url: str, program: list[str]) -> tuple[int, float]:
    """(changes in the new mirror file, seconds the command took)."""
    with tempfile.TemporaryDirectory(prefix="bench-mirror-") as directory:
        path = Path(directory) / "mirror.sqlite"
        command = [*program, "mirror", "--once", "--to", str(path),
                   "--server", url]
        began = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=MIRROR_SECONDS_MAX)
        seconds = time.perf_counter() - began
        if result.returncode != 0:
            raise BenchError(f"changeagent mirror exited {result.returncode}: "
                             f"{result.stderr.strip()[-300:]}")
        with sqlite3.connect(path) as connection:
            (written,) = connection.execute("SELECT count(*) FROM changes").fetchone()
        return int(written), seconds
