"""`python -m bench.replication_floor` runs the stand-in write path (3 processes, or
one), with each real layer swapped in, and reports latency and CPU per member."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"(floor[a-z+]*): p50 ([\d.]+) ms, ([\d,]+) writes/s, CPU per write (\d+) us "
    r"\(([\d +]+); the leader first\)"
)


def _run(*arguments: str) -> list[tuple[str, ...]]:
    before = {process.pid for process in psutil.process_iter()}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.replication_floor", "--writes", "60", "--warmup", "10",
         "--rounds", "1", *arguments],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    left = [process.cmdline() for process in psutil.process_iter()
            if process.pid not in before and "replication_floor" in " ".join(_cmdline(process))]
    assert left == [], left  # every stand-in it started is stopped
    return LINE.findall(output)


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_every_layer_through_three_members() -> None:
    # Each stand-in answers a write only once a follower acknowledged it, and the
    # bench checks every answer names the next index: a layer that lost or reordered
    # a write would fail the run.
    systems = "floor,floor+aiohttp,floor+websocket,floor+storage,floor+aiohttp+websocket+storage"
    rows = _run("--systems", systems)
    assert [row[0] for row in rows] == systems.split(","), rows
    for _, p50, _, cpu, each in rows:
        members = [int(value) for value in each.split(" + ")]
        assert float(p50) > 0 and len(members) == 3
        assert abs(sum(members) - int(cpu)) <= 3  # the parts add up to the whole (rounding)


def test_one_member() -> None:
    rows = _run("--members", "1", "--systems", "floor,floor+aiohttp+storage")
    assert [(row[0], len(row[4].split(" + "))) for row in rows] == [
        ("floor", 1), ("floor+aiohttp+storage", 1)], rows


def test_an_unknown_layer_is_refused() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.replication_floor", "--systems", "floor+grpc"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert "unknown systems: floor+grpc" in completed.stderr
