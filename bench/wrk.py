"""Run wrk with one of the bench's Lua scripts and parse its summary line.

wrk's own CPU time is read from RUSAGE_CHILDREN around the run (wrk is the only child
reaped meanwhile), so the report can show when the generator is the bottleneck.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson

from bench.procs import BenchError, children_cpu_seconds, env_without_proxies
from bench.systems.base import PAYLOAD

LUA_DIR = Path(__file__).resolve().parent / "lua"


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, script: str, connections: int, duration_seconds: int,
            run_label: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """One wrk run; returns its counters, percentiles (µs), throughput and CPU use."""
    threads = max(1, min(2, connections))
    env = env_without_proxies()
    env.update({"BENCH_LUA_DIR": str(LUA_DIR), "BENCH_PAYLOAD": PAYLOAD.decode(),
                "BENCH_RUN": run_label})
    env.update(extra_env or {})
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration_seconds}s",
            "--timeout", "10s", "-s", str(LUA_DIR / script), url]
    cpu_before = children_cpu_seconds()
    try:
        result = subprocess.run(argv, capture_output=True, timeout=duration_seconds + 30,
                                env=env, cwd=os.getcwd())
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"wrk did not finish: {' '.join(argv)}") from error
    cpu_used = children_cpu_seconds() - cpu_before
    output = result.stdout.decode(errors="replace")
    for line in output.splitlines():
        if line.startswith("BENCHJSON "):
            summary: dict[str, Any] = orjson.loads(line[len("BENCHJSON "):])
            break
    else:
        raise BenchError(f"wrk gave no summary (exit {result.returncode}):\n{output}\n"
                         f"{result.stderr.decode(errors='replace')}")
    seconds = summary["duration_us"] / 1e6
    errors = sum(summary[k] for k in summary if k.startswith("errors_"))
    ok = max(0, summary["requests"] - summary["errors_status"])
    summary.update({"seconds": seconds, "ok": ok, "errors": errors,
                    "throughput": ok / seconds if seconds > 0 else 0.0,
                    "generator_cpu_percent": 100.0 * cpu_used / seconds if seconds else 0.0,
                    "generator": "wrk", "connections": connections, "threads": threads})
    return summary
