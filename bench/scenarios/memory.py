"""Scenario g: resident memory of one node holding 0 and N changes.

Empty: a fresh node, 1 s (quick: 0.1 s) after it answers (one fresh node per run). Loaded:
the last of those nodes right after N changes were written to it, then (each run) after a
graceful restart on the same data, and after a consumer has read all N changes from the
start (at most 30 s of reading), which is when caches would fill.
RSS includes the node's child processes, if any.
"""

from __future__ import annotations

import time

from bench.procs import PROCESSES, rss_bytes
from bench.scenarios.common import Recorder, Settings, run_async, running
from bench.scenarios.reads import read_everything
from bench.systems.base import System

MEMORY = "g. memory"
READ_SECONDS_MAX = 30.0  # etcd's paged range slows down with the keys left to read


def _mb(system: System, settings: Settings) -> float:
    time.sleep(settings.settle_seconds)
    return rss_bytes(system.pids()) / 2**20


def run_memory(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    for run in range(settings.runs):
        system = system_cls(PROCESSES, 1)
        with running(system, recorder, MEMORY) as ok:
            if not ok:
                return
            recorder.add(MEMORY, "RSS of an empty node", system.name, _mb(system, settings), "MB",
                         "lower")
            if run == settings.runs - 1:  # the last fresh node goes on to hold N changes
                _loaded(system, settings, recorder)


def _loaded(system: System, settings: Settings, recorder: Recorder) -> None:
    deadline = time.monotonic() + settings.preload_seconds_max
    began = time.monotonic()
    stored = run_async(system.preload(settings.memory_changes, deadline),
                       settings.preload_seconds_max + 60)
    load_seconds = time.monotonic() - began
    label = f"{settings.memory_changes:,} changes"
    recorder.add(MEMORY, f"RSS right after writing {label}", system.name, _mb(system, settings),
                 "MB", "lower", stored=stored, preload_seconds=round(load_seconds, 1))
    for _ in range(settings.runs):
        system.restart_member(0)
        recorder.add(MEMORY, f"RSS after a restart, holding {label}", system.name,
                     _mb(system, settings), "MB", "lower")
        read, seconds, _ = run_async(read_everything(system, stored, READ_SECONDS_MAX),
                                     settings.scenario_seconds_max)
        recorder.add(MEMORY, f"RSS after reading {label} from the start (30 s at most)",
                     system.name, _mb(system, settings), "MB", "lower", read=read,
                     read_seconds=round(seconds, 1))
