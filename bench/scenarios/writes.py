"""Scenario a: durable writes at 1, 16, 64 and 256 concurrent clients.

HTTP systems are driven by wrk (Lua scripts in bench/lua); every system, Redis
included, is also driven by the asyncio generator, so the Redis ratio compares
figures produced by the same generator. Each client has one request in flight
(no pipelining); latency is from sending a request to its full response.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.aioclient import ConnectionClosed
from bench.procs import cpu_seconds, self_cpu_seconds
from bench.scenarios.common import Recorder, Settings, percentile, run_async, running
from bench.systems.base import System, WriteFailed
from bench.wrk import run_wrk, wrk_available

SCENARIO = "a. durable writes"


def topology_name(members: int) -> str:
    return "standalone" if members == 1 else f"{members} members"


def run_writes(system_cls: type[System], members: int, settings: Settings,
               recorder: Recorder) -> None:
    from bench.procs import PROCESSES

    system = system_cls(PROCESSES, members)
    with running(system, recorder, f"{SCENARIO}, {topology_name(members)}") as ok:
        if not ok:
            return
        generators = []
        if system.wrk_write() is not None and wrk_available():
            generators.append("wrk")
        generators.append("asyncio")
        for generator in generators:
            clients_list = (settings.write_clients if generator == "wrk"
                            else settings.asyncio_write_clients)
            for clients in clients_list:
                for run in range(settings.runs):
                    _one_level(system, members, generator, clients, run, settings, recorder)


def _one_level(system: System, members: int, generator: str, clients: int, run: int,
               settings: Settings, recorder: Recorder) -> None:
    pids = system.pids()
    server_cpu_before = cpu_seconds(pids)
    if generator == "wrk":
        target = system.wrk_write()
        assert target is not None
        url, script, env = target
        result = run_wrk(url, script, clients, settings.write_seconds,
                         f"{run}-{clients}-{time.monotonic_ns()}", env)
        p50_ms = result["percentiles_us"]["50"] / 1000
        p99_ms = result["percentiles_us"]["99"] / 1000
        cdf = {q: v / 1000 for q, v in result["percentiles_us"].items()}
    else:
        result = run_async(_asyncio_writes(system, clients, settings.write_seconds),
                           settings.write_seconds + 60)
        p50_ms, p99_ms, cdf = result["p50_ms"], result["p99_ms"], result["cdf_ms"]
    server_cpu = 100 * (cpu_seconds(pids) - server_cpu_before) / max(result["seconds"], 1e-9)
    plural = "client" if clients == 1 else "clients"
    label = f"{topology_name(members)}, {clients} {plural} ({generator})"
    scenario = f"{SCENARIO}, {topology_name(members)}"
    common = {"generator_cpu_percent": round(result["generator_cpu_percent"], 1),
              "server_cpu_percent": round(server_cpu, 1), "errors": result["errors"]}
    recorder.add(scenario, f"writes/s, {label}", system.name, result["throughput"],
                 "writes/s", "higher", **common)
    recorder.add(scenario, f"p50 write latency, {label}", system.name, p50_ms, "ms", "lower")
    recorder.add(scenario, f"p99 write latency, {label}", system.name, p99_ms, "ms", "lower")
    recorder.sample(f"write_cdf/{topology_name(members)}/{clients}/{generator}",
                    system.name, cdf)
    recorder.sample(f"write_throughput/{topology_name(members)}/{generator}/{clients}/{run}",
                    system.name, result["throughput"])


async def _asyncio_writes(system: System, clients: int, seconds: float) -> dict[str, Any]:
    connections = [await system.connect() for _ in range(clients)]
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(connection: Any) -> None:
        nonlocal errors
        sequence = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await system.write(connection, sequence)
            except (WriteFailed, ConnectionClosed):
                errors += 1
                await asyncio.sleep(0.01)
                continue
            latencies.append(time.perf_counter() - started)
            sequence += 1

    cpu_before = self_cpu_seconds()
    began = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    elapsed = time.perf_counter() - began
    cpu = self_cpu_seconds() - cpu_before
    quantiles = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.9]
    return {"seconds": elapsed, "throughput": len(latencies) / elapsed, "errors": errors,
            "p50_ms": percentile(latencies, 0.50) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "cdf_ms": {f"{q:g}": percentile(latencies, q / 100) * 1000 for q in quantiles},
            "generator_cpu_percent": 100 * cpu / elapsed}
