"""Run wrk with one of the bench's Lua scripts and parse its summary line.

wrk's own CPU time is read from RUSAGE_CHILDREN around the run (wrk is the only child
reaped meanwhile), so the report can show when the generator is the bottleneck.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import orjson

from bench.procs import BenchError, children_cpu_seconds, env_without_proxies
from bench.systems.base import PAYLOAD

LUA_DIR = Path(__file__).resolve().parent / "lua"


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, script: str, connections: int, duration_seconds: float,
            run_label: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """One wrk run; returns its counters, percentiles (µs), throughput and CPU use.

    wrk's -d is whole seconds: a fractional duration (quick mode) runs wrk with the next
    whole second and interrupts it (SIGINT, by pid) when the window ends; it then stops
    its threads within 0.1 s and prints its summary for the time it actually ran.
    """
    threads = max(1, min(2, connections))
    env = env_without_proxies()
    env.update({"BENCH_LUA_DIR": str(LUA_DIR), "BENCH_PAYLOAD": PAYLOAD.decode(),
                "BENCH_RUN": run_label})
    env.update(extra_env or {})
    whole_seconds = max(1, math.ceil(duration_seconds))
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{whole_seconds}s",
            "--timeout", "10s", "-s", str(LUA_DIR / script), url]
    cpu_before = children_cpu_seconds()
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd())
    try:
        if whole_seconds != duration_seconds:
            try:
                popen.wait(timeout=duration_seconds)
            except subprocess.TimeoutExpired:
                popen.send_signal(signal.SIGINT)
        stdout, stderr = popen.communicate(timeout=whole_seconds + 30)
    except subprocess.TimeoutExpired as error:
        popen.kill()
        popen.communicate()
        raise BenchError(f"wrk did not finish: {' '.join(argv)}") from error
    result = subprocess.CompletedProcess(argv, popen.returncode, stdout, stderr)
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


def run_wrk_preload(url: str, script: str, count: int, connections: int,
                    seconds_max: float, extra_env: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    """Setup only: wrk until `count` requests were acknowledged, or `seconds_max`.

    The script stops each wrk thread at its share and prints BENCHDONE; wrk itself only
    ends at its -d, so once every thread is done it is interrupted (SIGINT, by pid), which
    makes it print its summary at once. Requests in flight when a thread stops are
    abandoned: the server may still store up to `connections` more than acknowledged.
    """
    threads = max(1, min(2, connections))
    env = env_without_proxies()
    env.update({"BENCH_LUA_DIR": str(LUA_DIR), "BENCH_PAYLOAD": PAYLOAD.decode(),
                "BENCH_RUN": "preload", "BENCH_PRELOAD_PER_THREAD": str(-(-count // threads))})
    env.update(extra_env or {})
    seconds = max(1, int(seconds_max))
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
            "--timeout", "10s", "-s", str(LUA_DIR / script), url]
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env)
    # wrk ends by itself at -d; this only guards against a wrk that hangs after that.
    watchdog = threading.Timer(seconds + 30, popen.kill)
    watchdog.start()
    lines = []
    done = 0
    try:
        assert popen.stdout is not None
        for raw in popen.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if line == "BENCHDONE":
                done += 1
                if done == threads and popen.poll() is None:
                    popen.send_signal(signal.SIGINT)
        popen.wait(timeout=30)
    finally:
        watchdog.cancel()
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    for line in lines:
        if line.startswith("BENCHJSON "):
            summary: dict[str, Any] = orjson.loads(line[len("BENCHJSON "):])
            break
    else:
        raise BenchError(f"wrk gave no summary (exit {popen.returncode}):\n"
                         + "\n".join(lines[-20:]))
    summary["ok"] = max(0, summary["requests"] - summary["errors_status"])
    summary["seconds"] = summary["duration_us"] / 1e6
    return summary
