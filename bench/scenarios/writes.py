"""Scenario a: durable writes at 1, 16, 64 and 256 concurrent clients.

HTTP systems are driven by wrk (Lua scripts in bench/lua); every system, Redis
included, is also driven by the asyncio generator, so the Redis ratio compares
figures produced by the same generator. Each client has one request in flight
(no pipelining); latency is from sending a request to its full response.

With 3 members the writes go to the leader, then (separate rows, "via a follower")
to a follower, which forwards them to the leader. Every member's Raft term is read
before the load and after each level: a term that grows while nothing was stopped is
a spurious election under load, reported as its own row.
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
    scenario = f"{SCENARIO}, {topology_name(members)}"
    with running(system, recorder, scenario) as ok:
        if not ok:
            return
        generators = []
        if system.wrk_write() is not None and wrk_available():
            generators.append("wrk")
        generators.append("asyncio")
        # (topology label, written through a follower?, generator, client counts); the
        # leader or a follower is looked up again before each level.
        plan: list[tuple[str, bool, str, list[int]]] = [
            (topology_name(members), False, generator,
             settings.write_clients if generator == "wrk" else settings.asyncio_write_clients)
            for generator in generators]
        if members > 1:
            plan.append((f"{topology_name(members)} via a follower", True, generators[0],
                         settings.follower_write_clients))
        terms = TermWatch(system, recorder)
        for topology, via_follower, generator, clients_list in plan:
            for clients in clients_list:
                for run in range(settings.runs):
                    member = system.follower_index() if via_follower else None
                    _one_level(system, scenario, topology, member, generator, clients,
                               run, settings, recorder)
                    terms.check(f"{topology}, {clients} clients ({generator})")
        terms.record(scenario)


class TermWatch:
    """Every member's Raft term before a write load and after each level of it."""

    def __init__(self, system: System, recorder: Recorder) -> None:
        self.system = system
        self.recorder = recorder
        self.before = system.raft_terms() if system.member_count > 1 else None
        self.latest = dict(self.before or {})
        self.leader_before = system.leader_index() if self.before else 0
        self.levels: list[str] = []  # the levels after which a term had grown

    def check(self, level: str) -> None:
        if self.before is None:
            return
        try:
            terms = self.system.raft_terms() or {}
        except OSError as error:
            self.recorder.log(f"  {self.system.name:11s} could not read terms after {level}: "
                              f"{error}")
            return
        if any(terms.get(i, 0) > term for i, term in self.latest.items()):
            self.levels.append(level)
            self.recorder.log(f"  {self.system.name:11s} term grew during {level}: "
                              f"{self.latest} -> {terms}")
        self.latest = terms

    def record(self, scenario: str) -> None:
        if self.before is None:
            return
        growth = max(self.latest.get(i, term) - term for i, term in self.before.items())
        leader_after = self.system.leader_index()
        self.recorder.add(scenario, "Raft term increase over the whole write load "
                          "(spurious elections; 0 = none)", self.system.name, growth, "terms",
                          "lower", terms_before=_by_name(self.before),
                          terms_after=_by_name(self.latest),
                          leader_before=self.leader_before, leader_after=leader_after,
                          grew_during=self.levels)


def _by_name(terms: dict[int, int]) -> dict[str, int]:
    """JSON-friendly: members by name (m0, m1, ...) instead of by index."""
    return {f"m{index}": term for index, term in sorted(terms.items())}


def _one_level(system: System, scenario: str, topology: str, member: int | None,
               generator: str, clients: int, run: int, settings: Settings,
               recorder: Recorder) -> None:
    pids = system.pids()
    server_cpu_before = cpu_seconds(pids)
    if generator == "wrk":
        target = system.wrk_write(member)
        assert target is not None
        url, script, env = target
        result = run_wrk(url, script, clients, settings.write_seconds,
                         f"{run}-{clients}-{time.monotonic_ns()}", env)
        p50_ms = result["percentiles_us"]["50"] / 1000
        p99_ms = result["percentiles_us"]["99"] / 1000
        cdf = {q: v / 1000 for q, v in result["percentiles_us"].items()}
    else:
        result = run_async(_asyncio_writes(system, clients, settings.write_seconds, member),
                           settings.write_seconds + 60)
        p50_ms, p99_ms, cdf = result["p50_ms"], result["p99_ms"], result["cdf_ms"]
    server_cpu = 100 * (cpu_seconds(pids) - server_cpu_before) / max(result["seconds"], 1e-9)
    plural = "client" if clients == 1 else "clients"
    label = f"{topology}, {clients} {plural} ({generator})"
    common = {"generator_cpu_percent": round(result["generator_cpu_percent"], 1),
              "server_cpu_percent": round(server_cpu, 1), "errors": result["errors"],
              "member": "leader" if member is None else member}
    recorder.add(scenario, f"writes/s, {label}", system.name, result["throughput"],
                 "writes/s", "higher", **common)
    recorder.add(scenario, f"p50 write latency, {label}", system.name, p50_ms, "ms", "lower")
    recorder.add(scenario, f"p99 write latency, {label}", system.name, p99_ms, "ms", "lower")
    recorder.sample(f"write_cdf/{topology}/{clients}/{generator}", system.name, cdf)
    recorder.sample(f"write_throughput/{topology}/{generator}/{clients}/{run}",
                    system.name, result["throughput"])


async def _asyncio_writes(system: System, clients: int, seconds: float,
                          member: int | None = None) -> dict[str, Any]:
    connections = [await system.connect(member) for _ in range(clients)]
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
