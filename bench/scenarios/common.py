"""Settings, the result recorder and small helpers shared by the scenarios."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.procs import TEARDOWN_GRACE_SECONDS, BenchError, SkipScenario
from bench.systems.base import System


@dataclass
class Settings:
    """How big and how long each scenario is; `quick()` and `full()` are the two presets."""

    mode: str
    runs: int
    write_clients: list[int]
    write_seconds: float
    asyncio_write_clients: list[int]
    catchup_changes: int
    notify_changes: int
    fanout_consumers: list[int]
    failover_runs: int
    join_changes: int
    join_runs: int
    memory_changes: int
    preload_seconds_max: float
    scenario_seconds_max: float
    settle_seconds: float = 1.0  # pause before an RSS sample
    # 3 members, writes sent to a follower (forwarded to the leader): these levels, with
    # wrk when it is available (else the asyncio generator).
    follower_write_clients: list[int] = field(default_factory=lambda: [1, 16, 64, 256])
    # i. consumers: the log that follow() and `changeagent mirror` read in full.
    consumer_changes: int = 1_000_000
    # j. SSE streams: consumers on one node, changes/s written, seconds of writing.
    stream_consumers: int = 1_000
    stream_rate: float = 100.0
    stream_seconds: float = 30.0
    # k. catch-up through nginx: consumers, each reading this many changes from the start.
    cache_consumers: int = 1_000
    cache_changes: int = 10_000
    # l. long-poll scale: waiting consumers on one node; connections per 127.0.0.x
    # source address and per generator process.
    longpoll_consumers: int = 50_000
    longpoll_per_source: int = 10_000
    longpoll_per_worker: int = 10_000

    def override(self, assignment: str) -> None:
        """Apply one NAME=VALUE from the command line (ints, floats, comma lists)."""
        name, _, text = assignment.partition("=")
        if not hasattr(self, name) or name == "mode":
            raise SystemExit(f"--set: unknown setting {name!r}")
        current = getattr(self, name)
        try:
            if isinstance(current, list):
                value: Any = [int(item) for item in text.split(",") if item]
            else:
                value = type(current)(text)
        except ValueError:
            raise SystemExit(f"--set: bad value for {name}: {text!r}") from None
        setattr(self, name, value)

    @classmethod
    def quick(cls) -> Settings:
        return cls(mode="quick", runs=1, write_clients=[1, 64], write_seconds=0.5,
                   asyncio_write_clients=[16], catchup_changes=5_000, notify_changes=100,
                   fanout_consumers=[200], failover_runs=1, join_changes=2_000, join_runs=2,
                   memory_changes=10_000, preload_seconds_max=15,
                   scenario_seconds_max=60, settle_seconds=0.1, follower_write_clients=[16],
                   consumer_changes=20_000, stream_consumers=100, stream_seconds=3.0,
                   cache_consumers=100, cache_changes=2_000, longpoll_consumers=2_000,
                   longpoll_per_source=1_000, longpoll_per_worker=1_000)

    @classmethod
    def full(cls) -> Settings:
        return cls(mode="full", runs=3, write_clients=[1, 16, 64, 256], write_seconds=5.0,
                   asyncio_write_clients=[1, 16, 64, 256], catchup_changes=100_000,
                   notify_changes=1_000, fanout_consumers=[1_000, 10_000], failover_runs=3,
                   join_changes=1_000_000, join_runs=3, memory_changes=1_000_000,
                   preload_seconds_max=600,
                   scenario_seconds_max=1800)


@dataclass
class Metric:
    scenario: str
    label: str
    system: str
    unit: str
    better: str  # "higher" or "lower"
    values: list[float] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Recorder:
    """Collects every measured value; the report takes medians, minima and maxima."""

    metrics: dict[tuple[str, str, str], Metric] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: Callable[[str], None] = print

    def add(self, scenario: str, label: str, system: str, value: float, unit: str,
            better: str = "higher", **extra: Any) -> None:
        key = (scenario, label, system)
        metric = self.metrics.get(key)
        if metric is None:
            metric = Metric(scenario, label, system, unit, better)
            self.metrics[key] = metric
        metric.values.append(float(value))
        metric.extra.append(extra)
        details = " ".join(f"{k}={_short(v)}" for k, v in extra.items())
        self.log(f"  {system:11s} {label}: {_short(value)} {unit}  {details}".rstrip())

    def skip(self, scenario: str, system: str, reason: str) -> None:
        self.skipped.append({"scenario": scenario, "system": system, "reason": reason})
        self.log(f"  {system:11s} {scenario}: {reason}")

    def sample(self, name: str, system: str, values: Any) -> None:
        self.samples.setdefault(name, {})[system] = values


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.0f}"
    return str(value)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1) of a non-empty list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_async(coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
    """Run one scenario coroutine on a fresh event loop (uvloop when available), bounded."""
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)

    try:
        import uvloop
    except ImportError:
        return asyncio.run(bounded())
    if sys.version_info >= (3, 12):
        return uvloop.run(bounded())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


@contextlib.contextmanager
def running(system: System, recorder: Recorder, scenario: str) -> Iterator[bool]:
    """Start `system`, yield True when it runs; record a skip and yield False otherwise.

    The system is always stopped afterwards, whatever happened inside (in the background:
    the next scenario starts its servers while these get their short grace, and waits for
    them to be gone before it measures anything).
    """
    def report(killed: list[str]) -> None:
        recorder.log(f"  {system.name:11s} ({scenario}) SIGKILL at teardown, not stopped "
                     f"{TEARDOWN_GRACE_SECONDS:g} s after SIGTERM: {', '.join(killed)}")

    try:
        system.start()
    except SkipScenario as skip:
        recorder.skip(scenario, system.name, str(skip))
        system.stop(report)
        yield False
        return
    except BenchError as error:
        recorder.skip(scenario, system.name, f"error: could not start: {error}")
        system.stop(report)
        yield False
        return
    except BaseException:
        system.stop(report)
        raise
    # The previous scenario's servers stopped while these started; none runs any more
    # when the measuring begins.
    system.processes.wait_retired()
    try:
        yield True
    finally:
        if system.killed_at_stop:
            recorder.log(f"  {system.name:11s} ({scenario}) SIGKILL for a removed member, not "
                         f"stopped {TEARDOWN_GRACE_SECONDS:g} s after SIGTERM: "
                         f"{', '.join(system.killed_at_stop)}")
        system.stop(report)


def guarded(recorder: Recorder, scenario: str, system_name: str,
            action: Callable[[], None]) -> None:
    """Run one scenario for one system; turn skips and errors into recorded skips."""
    started = time.monotonic()
    try:
        action()
    except SkipScenario as skip:
        recorder.skip(scenario, system_name, str(skip))
    except Exception as error:  # one broken scenario must not stop the others
        recorder.log(traceback.format_exc())
        recorder.skip(scenario, system_name, f"error: {type(error).__name__}: {error}")
    recorder.log(f"  ({scenario} on {system_name}: {time.monotonic() - started:.1f} s)")
