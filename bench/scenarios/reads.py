"""Scenarios b, c and d: catch-up reads, notification latency and fan-out.

b. One consumer reads the whole log from the start in pages of 100 (changes/s).
c. One consumer waits (long-poll / watch / XREAD BLOCK); a writer writes one change;
   latency = consumer has the change - writer has its acknowledgement (clamped at 0:
   a consumer is often told in the same instant as the writer, or first), and also
   consumer has it - write was sent; repeated for every change, one at a time.
d. N consumers wait on one node; one change is written; time from the change becoming
   visible (the write's ack or the first consumer woken, whichever is first) until the
   last consumer has it, and the node's RSS while they wait.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.procs import PROCESSES, BenchError, rss_bytes, self_cpu_seconds
from bench.scenarios.common import Recorder, Settings, median, percentile, run_async, running
from bench.systems.base import Subscription, System

CATCHUP = "b. catch-up reads"
NOTIFY = "c. notification latency"
FANOUT = "d. fan-out"
CONNECT_BATCH = 200
WAKE_SECONDS_MAX = 2.0
WAITS_TAKEN_SECONDS_MAX = 60.0


def run_catchup(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    system = system_cls(PROCESSES, 1)
    with running(system, recorder, CATCHUP) as ok:
        if ok:
            run_async(_catchup(system, settings, recorder), settings.scenario_seconds_max)


async def _catchup(system: System, settings: Settings, recorder: Recorder) -> None:
    deadline = time.monotonic() + settings.preload_seconds_max
    stored = await system.preload(settings.catchup_changes, deadline)
    label = f"changes/s reading {settings.catchup_changes:,} changes in pages of 100"
    for _ in range(settings.runs):
        read, seconds, cpu = await read_everything(system, stored)
        if read < stored:
            raise BenchError(f"read only {read} of {stored} changes")
        recorder.add(CATCHUP, label, system.name, read / seconds, "changes/s", "higher",
                     generator_cpu_percent=round(100 * cpu / seconds, 1), changes=read)
        replay = getattr(system, "watch_replay", None)
        if replay is not None:
            received, seconds = await replay(stored, 300)
            recorder.add(CATCHUP, f"changes/s replaying {settings.catchup_changes:,} changes "
                         "through one watch from revision 1 (etcd's fast path, context only)",
                         system.name, received / seconds, "changes/s", "higher",
                         changes=received)


async def read_everything(system: System, stored: int,
                          seconds_max: float = 600) -> tuple[int, float, float]:
    """Read the log from the start until `stored` changes were seen: (read, s, cpu s).

    Stops early after `seconds_max` (the caller sees fewer than `stored`).
    """
    connection = await system.connect()
    cursor = system.start_cursor()
    read = 0
    cpu_before = self_cpu_seconds()
    began = time.perf_counter()
    try:
        while read < stored and time.perf_counter() - began < seconds_max:
            count, cursor = await system.read_page(connection, cursor)
            if count == 0:
                break
            read += count
    finally:
        connection.close()
    return read, time.perf_counter() - began, self_cpu_seconds() - cpu_before


def run_notify(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    system = system_cls(PROCESSES, 1)
    with running(system, recorder, NOTIFY) as ok:
        if ok:
            run_async(_notify(system, settings, recorder), settings.scenario_seconds_max)


async def _notify(system: System, settings: Settings, recorder: Recorder) -> None:
    for run in range(settings.runs):
        writer = await system.connect()
        try:
            after_ack, after_send, missed = await _notify_loop(system, writer,
                                                               settings.notify_changes)
        finally:
            writer.close()
        recorder.add(NOTIFY, f"consumers not woken within {WAKE_SECONDS_MAX:g} s (missed "
                     f"wake-ups), {settings.notify_changes:,} changes", system.name, missed,
                     "count", "lower")
        for name, values in (("after the write's ack", after_ack),
                             ("after the write was sent", after_send)):
            for fraction in (0.50, 0.99):
                label = (f"p{fraction * 100:.0f} notification latency {name}, "
                         f"{settings.notify_changes:,} changes")
                recorder.add(NOTIFY, label, system.name, percentile(values, fraction) * 1000,
                             "ms", "lower", changes=len(values))
        if run == settings.runs - 1:
            recorder.sample("notify_latency_ms", system.name,
                            [round(v * 1000, 4) for v in after_send])


async def _subscribe(system: System) -> Subscription:
    subscription = await system.subscribe(await system.connect())
    if subscription.ready is not None:
        await asyncio.wait_for(subscription.ready, 10)
    return subscription


async def _notify_loop(system: System, writer: Any,
                       count: int) -> tuple[list[float], list[float], int]:
    """Write `count` changes one at a time; return latencies and missed wake-ups.

    A consumer that is not woken within WAKE_SECONDS_MAX of the write's ack is a
    missed wake-up: it is counted, gets no latency sample, and is replaced by a new
    consumer at the end of the log, so one lost wake-up does not stall the scenario.
    """
    after_ack: list[float] = []
    after_send: list[float] = []
    missed = 0
    subscription = await _subscribe(system)
    try:
        for sequence in range(count):
            arrival = subscription.arm()
            # Give the server a moment to register the wait before the write arrives.
            await asyncio.sleep(0.002)
            sent_at = time.perf_counter()
            await system.write(writer, sequence)
            acked_at = time.perf_counter()
            try:
                await asyncio.wait_for(asyncio.shield(arrival), WAKE_SECONDS_MAX)
            except TimeoutError:
                missed += 1
                subscription.close()
                subscription = await _subscribe(system)
                continue
            if subscription.advance() < 1:
                raise BenchError(f"{system.name}: consumer woke up without a change")
            after_ack.append(max(0.0, subscription.arrived_at - acked_at))
            after_send.append(subscription.arrived_at - sent_at)
    finally:
        subscription.close()
    if not after_ack:
        raise BenchError(f"{system.name}: no consumer was ever woken")
    return after_ack, after_send, missed


async def _waits_taken(system: System, expected: int) -> None:
    """Long-polls and XREADs are not confirmed one by one: wait until the server says it
    holds them all (changeagent's `longPolls`, Redis's `blocked_clients`); a server that
    cannot tell gets a fixed pause instead."""
    deadline = time.monotonic() + WAITS_TAKEN_SECONDS_MAX
    while True:
        waiting = await asyncio.to_thread(system.waiting_consumers)
        if waiting is None:
            await asyncio.sleep(0.5 + expected / 4000)
            return
        if waiting >= expected:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{system.name} holds {waiting} of {expected} waits after "
                             f"{WAITS_TAKEN_SECONDS_MAX:.0f} s")
        await asyncio.sleep(0.01)


def run_fanout(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    system = system_cls(PROCESSES, 1)
    with running(system, recorder, FANOUT) as ok:
        if not ok:
            return
        for consumers in settings.fanout_consumers:
            for _ in range(settings.runs):
                run_async(_fanout(system, consumers, recorder), settings.scenario_seconds_max)


async def _fanout(system: System, consumers: int, recorder: Recorder) -> None:
    control = await system.connect()
    already_waiting = await asyncio.to_thread(system.waiting_consumers)
    template = await system.subscribe(await system.connect())
    subscriptions: list[Subscription] = [template]
    try:
        for start in range(0, consumers - 1, CONNECT_BATCH):
            batch = min(CONNECT_BATCH, consumers - 1 - start)
            connections = await asyncio.gather(*(system.connect() for _ in range(batch)))
            subscriptions.extend(template.clone(c) for c in connections)
        arrivals = [s.arm() for s in subscriptions]
        readies = [s.ready for s in subscriptions if s.ready is not None]
        if readies:
            await asyncio.wait_for(asyncio.gather(*readies), 60)
        else:
            await _waits_taken(system, (already_waiting or 0) + consumers)
        rss_waiting = rss_bytes(system.pids())
        cpu_before = self_cpu_seconds()
        sent_at = time.perf_counter()
        await system.write(control, 0)
        acked_at = time.perf_counter()
        await asyncio.wait(arrivals, timeout=30)
        arrived = [s.arrived_at for s in subscriptions if s.arrived_at >= sent_at]
        cpu = self_cpu_seconds() - cpu_before
        # The change is visible from the first sign of its commit: the writer's ack or the
        # first consumer woken, whichever came first. Measuring from there keeps the
        # disk's fsync time (the write scenario's business) out of the fan-out figure.
        visible_at = min([acked_at, *arrived])
        delivered = [t - visible_at for t in arrived]
    finally:
        control.close()
        for subscription in subscriptions:
            subscription.close()
    label = f"{consumers:,} consumers"
    all_seconds = max(delivered) if len(delivered) == consumers else float("nan")
    recorder.add(FANOUT, f"time until all have the change, {label}", system.name,
                 all_seconds * 1000, "ms", "lower", delivered=len(delivered),
                 write_ms=round((acked_at - sent_at) * 1000, 3),
                 from_send_ms=round((max(arrived, default=sent_at) - sent_at) * 1000, 3),
                 generator_cpu_ms=round(cpu * 1000, 1))
    recorder.add(FANOUT, f"median consumer latency, {label}", system.name,
                 median(delivered) * 1000, "ms", "lower")
    recorder.add(FANOUT, f"p99 consumer latency, {label}", system.name,
                 percentile(delivered, 0.99) * 1000, "ms", "lower")
    recorder.add(FANOUT, f"server RSS while {label} wait", system.name,
                 rss_waiting / 2**20, "MB", "lower")
