"""Scenarios j, k and l: read scale-out (issue 13, section 4).

j. streams: N SSE consumers (`GET /changes?feed=eventsource`) on one standalone node
   while a writer in its own process writes R changes/s (paced, up to 128 writes in
   flight at most); for each change, the time from the write's acknowledgement (and from it
   being sent) to the LAST consumer having it: p50 and p99 over the changes; the
   server's CPU over the window, and the generator's (consumers and writer). The
   consumers are raw asyncio protocols in one event loop that only look for `id:` lines.
k. catch-up through nginx: a 3-member cluster holds M changes; nginx runs Debian's
   package with deploy/nginx.conf (the members and a free listen port substituted; its
   prefix, logs and cache in the bench's temporary data root, a fresh one each run); N
   consumers each read the first M changes in full pages of 100, (1) directly from one
   member, (2) through nginx with an empty cache, (3) again through the same nginx,
   now warm; aggregate changes/s and through-nginx / direct. nginx's access log says
   how many requests reached a member (cache MISS). The consumers are one asyncio
   process that only counts the ids of each page and takes the last as the next `since`;
   for context, wrk (C) then replays the same page URLs on as many connections, as many
   times, directly and through the warm nginx, to show what the Python generator hides.
l. long-poll scale: N consumers wait on one node (changeagent: long-polls; etcd: one
   watch stream each, as in scenario d); one change is written; time until all have it
   and the node's RSS while they wait. The generator runs in several processes (each
   holding at most `longpoll_per_worker` connections) and binds each connection to one
   of several 127.0.0.x source addresses (`longpoll_per_source` each, with
   IP_BIND_ADDRESS_NO_PORT), so the 28,000 ephemeral ports of one address pair are no
   limit. When the open-file limit of the node (or of the generator) cannot hold N, the
   bench tries to raise it, then runs the largest count that fits and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import re
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.aioclient import HttpConnection, http_connect
from bench.procs import (
    LOOPBACK,
    PROCESSES,
    BenchError,
    SkipScenario,
    Started,
    accepts_connections,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    rss_bytes,
    self_cpu_seconds,
    wait_until,
)
from bench.scenarios.common import Recorder, Settings, median, percentile, run_async, running
from bench.systems.base import PAYLOAD, System
from bench.wrk import run_wrk_preload, wrk_available

STREAMS = "j. SSE streams"
CACHE = "k. catch-up through nginx"
LONGPOLLS = "l. long-poll scale"

CONNECT_BATCH = 200
READY_SECONDS_MAX = 60.0
DELIVERY_SECONDS_MAX = 5.0  # after the last write, for the last consumer to have it
WRK_SECONDS_MAX = 300.0
WRITER_CONNECTIONS = 128  # writes in flight at most: the pace holds while the node is slow
PAGE = 100
LONGPOLL_BLOCK_SECONDS = 300  # longer than connecting every consumer takes
WORKER_SECONDS_MAX = 400.0
ARRIVAL_SECONDS_MAX = 60.0
# etcd confirms 20,000 watch streams in about 70 s on the 2-core machine, and now and
# then leaves a few dozen unconfirmed that work all the same: the wait ends when no
# confirmation came for WATCHES_STALLED_SECONDS.
WATCHES_CREATED_SECONDS_MAX = 240.0
WATCHES_STALLED_SECONDS = 15.0
RELEASE_SECONDS_MAX = 120.0
SOURCE_FIRST, SOURCE_LAST = 2, 254  # 127.0.0.x source addresses of the long-polls
_next_source = SOURCE_FIRST
FD_MARGIN = 64  # descriptors a node or worker needs besides the consumers' sockets
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
NGINX_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
UPSTREAM_SERVERS = re.compile(r"(?:^\s*server 127\.0\.0\.1:\d+[^\n]*\n)+", re.MULTILINE)
# Set by the command line when it tried to install nginx and could not.
nginx_missing_reason: str | None = None

_SPAWN = multiprocessing.get_context("spawn")


def _only_changeagent(system_cls: type[System], recorder: Recorder, scenario: str,
                      why: str) -> bool:
    if system_cls.family == "changeagent":
        return True
    recorder.skip(scenario, system_cls.name, f"not applicable: {why}")
    return False


def _stop_worker(process: Any) -> None:
    """A spawned helper process: joined, else SIGTERM, else SIGKILL, by its pid."""
    process.join(timeout=5)
    if process.is_alive():
        process.terminate()
        process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join(timeout=5)


async def _receive(pipe: Connection, timeout: float, what: str) -> Any:
    def wait() -> Any:
        if not pipe.poll(timeout):
            raise BenchError(f"no answer from {what} within {timeout:.0f} s")
        return pipe.recv()

    try:
        return await asyncio.to_thread(wait)
    except EOFError as error:
        raise BenchError(f"{what} exited without answering") from error


# j. SSE streams ------------------------------------------------------------------------


class SseConsumer(asyncio.Protocol):
    """One SSE stream: records, per change id, how many consumers have it and when the
    last of them got it (ids are the only thing parsed)."""

    def __init__(self, request: bytes, tally: dict[int, list[float]],
                 ready: asyncio.Future[bytes]) -> None:
        self.request = request
        self.tally = tally
        self.ready = ready
        self.carry = b""
        self.headers_done = False
        self.lost = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.carry:
            data = self.carry + data
            self.carry = b""
        if not self.headers_done:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.carry = data
                return
            self.headers_done = True
            if not self.ready.done():
                self.ready.set_result(data[9:12])  # the status code
            data = data[end + 2:]  # an id line right after the headers keeps its "\n"
        tally = self.tally
        position = 0
        while True:
            start = data.find(b"\nid: ", position)
            if start < 0:
                self.carry = data[max(position, len(data) - 4):]
                return
            end = data.find(b"\n", start + 5)
            if end < 0:
                self.carry = data[start:]
                return
            identifier = int(data[start + 5:end])
            entry = tally.get(identifier)
            if entry is None:
                tally[identifier] = [1, now]
            else:
                entry[0] += 1
                entry[1] = now
            position = end

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(BenchError(f"stream closed: {exc or 'by the server'}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _factory(consumer: SseConsumer) -> Callable[[], SseConsumer]:
    return lambda: consumer


def run_streams(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    if not _only_changeagent(system_cls, recorder, STREAMS,
                             "Server-Sent Events feeds are changeagent's"):
        return
    system = system_cls(PROCESSES, 1)
    with running(system, recorder, STREAMS) as ok:
        if ok:
            for _ in range(settings.runs):
                run_async(_streams(system, settings, recorder), settings.scenario_seconds_max)


async def _streams(system: System, settings: Settings, recorder: Recorder) -> None:
    consumers = settings.stream_consumers
    port = system.members[0].port
    control = await system.connect()
    try:
        since = await system.end_cursor(control)  # type: ignore[attr-defined]
    finally:
        control.close()
    already = await asyncio.to_thread(system.waiting_consumers) or 0
    loop = asyncio.get_running_loop()
    tally: dict[int, list[float]] = {}
    request = (f"GET /changes?feed=eventsource&since={since} HTTP/1.1\r\n"
               f"Host: {LOOPBACK}:{port}\r\nAccept: text/event-stream\r\n\r\n").encode()
    streams: list[SseConsumer] = []
    parent, child = _SPAWN.Pipe()
    writer = _SPAWN.Process(target=_writer_process, daemon=True, name="bench-sse-writer",
                            args=(child, port, settings.stream_rate, settings.stream_seconds))
    writer.start()
    try:
        for first in range(0, consumers, CONNECT_BATCH):
            batch = [SseConsumer(request, tally, loop.create_future())
                     for _ in range(min(CONNECT_BATCH, consumers - first))]
            await asyncio.gather(*(loop.create_connection(_factory(c), LOOPBACK, port)
                                   for c in batch))
            streams += batch
        statuses = await asyncio.wait_for(asyncio.gather(*(s.ready for s in streams)),
                                          READY_SECONDS_MAX)
        refused = [s for s in statuses if s != b"200"]
        if refused:
            raise BenchError(f"{len(refused)} of {consumers} streams refused: {refused[0]!r}")
        await _wait_waiting(system, already + consumers)
        if await _receive(parent, READY_SECONDS_MAX, "the writer process") != "ready":
            raise BenchError("the writer process did not get ready")
        server_before = cpu_seconds(system.pids())
        generator_before = self_cpu_seconds()
        began = time.perf_counter()
        parent.send("go")
        outcome = await _receive(parent, settings.stream_seconds + 60, "the writer process")
        records: list[tuple[int, float, float]] = outcome["records"]
        wanted = [identifier for identifier, _, _ in records]
        deadline = time.perf_counter() + DELIVERY_SECONDS_MAX
        while time.perf_counter() < deadline and any(
                tally.get(i, (0, 0.0))[0] < consumers for i in wanted):
            await asyncio.sleep(0.01)
        ended = time.perf_counter()
        server_cpu = cpu_seconds(system.pids()) - server_before
        generator_cpu = self_cpu_seconds() - generator_before
        dropped = sum(1 for s in streams if s.lost)
    finally:
        for stream in streams:
            stream.close()
        _stop_worker(writer)
    after_ack: list[float] = []
    after_send: list[float] = []
    undelivered = 0
    for identifier, sent_at, acked_at in records:
        count, last_at = tally.get(identifier, (0, 0.0))
        if count < consumers:
            undelivered += 1
            continue
        after_ack.append(max(0.0, last_at - acked_at))
        after_send.append(last_at - sent_at)
    if not after_ack:
        raise BenchError(f"no change reached all {consumers} streams "
                         f"({len(records)} written, {dropped} streams dropped)")
    window = ended - began
    written_per_s = len(records) / outcome["seconds"] if outcome["seconds"] else 0.0
    label = f"{consumers:,} SSE consumers, {settings.stream_rate:g} changes/s"
    writes = [acked_at - sent_at for _, sent_at, acked_at in records]
    extra = {"changes": len(records), "written_per_s": round(written_per_s, 1),
             "write_p50_ms": round(percentile(writes, 0.50) * 1000, 2),
             "write_p99_ms": round(percentile(writes, 0.99) * 1000, 2),
             "write_errors": outcome["errors"], "streams_dropped": dropped,
             "writer_cpu_percent": round(100 * outcome["cpu"] / outcome["seconds"], 1)}
    for name, values in (("the write's ack", after_ack), ("the write was sent", after_send)):
        for fraction in (0.50, 0.99):
            recorder.add(STREAMS, f"p{fraction * 100:.0f} from {name} to the last of {label}",
                         system.name, percentile(values, fraction) * 1000, "ms", "lower",
                         **extra)
    recorder.add(STREAMS, f"changes not delivered to every consumer within "
                 f"{DELIVERY_SECONDS_MAX:g} s, {label}", system.name, undelivered, "count",
                 "lower")
    recorder.add(STREAMS, f"server CPU, {label}", system.name, 100 * server_cpu / window,
                 "% of a core", "lower")
    recorder.add(STREAMS, f"generator CPU (the consumers' event loop), {label}", system.name,
                 100 * generator_cpu / window, "% of a core", "lower",
                 writer_cpu_percent=extra["writer_cpu_percent"])


async def _wait_waiting(system: System, expected: int) -> int:
    """Until the node says it holds `expected` waits (streams and long-polls alike wait on
    the same grouped waiters, counted as `longPolls`); returns the count it last said."""
    deadline = time.monotonic() + READY_SECONDS_MAX
    waiting = 0
    while time.monotonic() < deadline:
        said: int | None = await asyncio.to_thread(system.waiting_consumers)
        waiting = said or 0
        if waiting >= expected:
            return waiting
        await asyncio.sleep(0.02)
    return waiting


def _writer_process(pipe: Connection, port: int, rate: float, seconds: float) -> None:
    """The streams scenario's writer, in its own process so that its acknowledgement
    times are not held up by the consumers' event loop."""
    try:
        pipe.send(run_async(_write_paced(pipe, port, rate, seconds), seconds + 90))
    except BaseException as error:  # the parent gets the reason, not a silent EOF
        with contextlib.suppress(Exception):
            pipe.send({"error": f"{type(error).__name__}: {error}"})
        raise


async def _write_paced(pipe: Connection, port: int, rate: float,
                       seconds: float) -> dict[str, Any]:
    pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
    connections = [await http_connect(port) for _ in range(WRITER_CONNECTIONS)]
    for connection in connections:
        pool.put_nowait(connection)
    raw = connections[0].build("POST", "/changes", b'{"data":' + PAYLOAD + b"}")
    records: list[tuple[int, float, float]] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        connection = await pool.get()
        sent_at = time.perf_counter()
        try:
            status, body = await connection.request_raw(raw)
        finally:
            pool.put_nowait(connection)
        acked_at = time.perf_counter()
        if status == 200:
            records.append((int(orjson.loads(body)["_id"]), sent_at, acked_at))
        else:
            errors += 1

    pipe.send("ready")
    await asyncio.to_thread(pipe.recv)  # "go"
    cpu_before = self_cpu_seconds()
    began = time.perf_counter()
    tasks = []
    for number in range(int(rate * seconds)):
        delay = began + number / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    for connection in connections:
        connection.close()
    return {"records": records, "errors": errors, "seconds": elapsed,
            "cpu": self_cpu_seconds() - cpu_before}


# k. catch-up through nginx -------------------------------------------------------------


def nginx_configuration(members: list[int], port: int) -> str:
    """deploy/nginx.conf with these member ports upstream and this listen port."""
    text = NGINX_CONFIG.read_text()
    lines = "".join(f"        server {LOOPBACK}:{member} max_fails=1 fail_timeout=5s;\n"
                    for member in members)
    text, replaced = UPSTREAM_SERVERS.subn(lines, text, count=1)
    if replaced != 1:
        raise BenchError(f"{NGINX_CONFIG} has no upstream server lines to replace")
    text, replaced = re.subn(r"listen 8080;", f"listen {LOOPBACK}:{port};", text)
    if replaced != 1:
        raise BenchError(f"{NGINX_CONFIG} has no `listen 8080;` line to replace")
    return text


class Nginx:
    """nginx in the foreground (its master's pid is ours), in a fresh prefix directory
    under the bench's data root: configuration, pid file, logs and cache."""

    def __init__(self, members: list[int]) -> None:
        self.members = members
        self.port = free_port()
        self.prefix = PROCESSES.make_dir("nginx")
        self.process: Started | None = None
        self.log_offset = 0

    def start(self) -> None:
        (self.prefix / "logs").mkdir()
        config = self.prefix / "nginx.conf"
        config.write_text(nginx_configuration(self.members, self.port))
        # As root its workers run as root too: the data root may be private to root.
        directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        argv = ["nginx", "-p", f"{self.prefix}/", "-c", str(config), "-g", directives]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise BenchError(f"nginx -t: {check.stderr.strip()[-400:]}")
        self.process = PROCESSES.start("nginx", argv, self.prefix)

        wait_until(lambda: accepts_connections(self.port), 30, "nginx to listen", self.process,
                   interval=0.02)

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None and self.process.alive() else []

    def cache_counts(self) -> dict[str, int]:
        """Requests logged since the last call, by $upstream_cache_status (the access log
        is flushed every second: call it after a pause, or after `stop`)."""
        path = self.prefix / "logs" / "access.log"
        try:
            with open(path, "rb") as log:
                log.seek(self.log_offset)
                text = log.read()
        except OSError:
            return {}
        end = text.rfind(b"\n") + 1
        self.log_offset += end
        counts: dict[str, int] = {}
        for status in re.findall(rb" cache=(\S*) ", text[:end]):
            key = status.decode() or "none"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def stop(self) -> None:
        """SIGTERM to the master by pid (it stops its workers); a worker still there
        after the master is gone is killed by its pid."""
        if self.process is None:
            return
        try:
            workers = psutil.Process(self.process.pid).children()
        except psutil.Error:
            workers = []
        PROCESSES.stop(self.process)
        for worker in workers:
            with contextlib.suppress(psutil.Error):
                worker.wait(timeout=5)
            with contextlib.suppress(psutil.Error):
                worker.kill()
        self.process = None

    def remove(self) -> None:
        PROCESSES.remove_dir(self.prefix)


def run_cache(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    if not _only_changeagent(system_cls, recorder, CACHE,
                             "its pages are POSTs (etcd) or RESP (Redis), not cacheable URLs"):
        return
    if shutil.which("nginx") is None:
        reason = nginx_missing_reason or "not installed"
        raise SkipScenario(f"nginx unavailable ({reason}); `apt-get install nginx`, or run "
                           "the bench as root without --no-install")
    system = system_cls(PROCESSES, 3)
    with running(system, recorder, CACHE) as ok:
        if ok:
            run_async(_cache(system, settings, recorder), settings.scenario_seconds_max)


async def _cache(system: System, settings: Settings, recorder: Recorder) -> None:
    changes = settings.cache_changes
    consumers = settings.cache_consumers
    deadline = time.monotonic() + settings.preload_seconds_max
    # More than the pages read, so that the last page read is full (cacheable) too.
    stored = await system.preload(changes + 2 * PAGE, deadline)
    if stored < changes + PAGE:
        raise BenchError(f"preloaded {stored} of {changes + 2 * PAGE} changes")
    members = [m.port for m in system.members]
    label = f"{consumers:,} consumers each reading the first {changes:,} changes"
    pages = await _page_paths(members[0], changes) if wrk_available() else None
    wrk_label = (f"wrk replaying the same {changes // PAGE} page URLs on {consumers:,} "
                 "connections (context: a generator in C)")
    for _ in range(settings.runs):
        direct = await _catch_up(members[0], consumers, changes, system.pids()[:1])
        if pages is not None:
            direct_wrk = await _wrk_pages(members[0], pages, consumers, system.pids()[:1])
        nginx = Nginx(members)
        try:
            nginx.start()
            cold = await _catch_up(nginx.port, consumers, changes, nginx.pids())
            await asyncio.sleep(1.2)  # nginx flushes its access log every second
            cold_counts = nginx.cache_counts()
            warm = await _catch_up(nginx.port, consumers, changes, nginx.pids())
            await asyncio.sleep(1.2)
            warm_counts = nginx.cache_counts()
            if pages is not None:
                warm_wrk = await _wrk_pages(nginx.port, pages, consumers, nginx.pids())
        finally:
            nginx.stop()
            nginx.remove()
        rows: tuple[tuple[str, dict[str, float], dict[str, int]], ...] = (
                ("directly from one member", direct, {}),
                ("through nginx, empty cache", cold, cold_counts),
                ("through nginx, warm cache", warm, warm_counts))
        for name, result, counts in rows:
            recorder.add(CACHE, f"changes/s {name}, {label} in pages of {PAGE}", system.name,
                         result["rate"], "changes/s", "higher", seconds=result["seconds"],
                         generator_cpu_percent=result["generator_cpu_percent"],
                         server_cpu_percent=result["server_cpu_percent"],
                         **{f"nginx_{k.lower()}": v for k, v in counts.items()})
        for name, result in (("empty cache", cold), ("warm cache", warm)):
            recorder.add(CACHE, f"through nginx / direct, {consumers:,} consumers, {name}",
                         system.name, result["rate"] / direct["rate"], "x", "higher")
        if pages is not None:
            recorder.add(CACHE, f"changes/s directly from one member, {wrk_label}",
                         system.name, direct_wrk["rate"], "changes/s", "higher",
                         **{k: v for k, v in direct_wrk.items() if k != "rate"})
            recorder.add(CACHE, f"changes/s through nginx, warm cache, {wrk_label}",
                         system.name, warm_wrk["rate"], "changes/s", "higher",
                         **{k: v for k, v in warm_wrk.items() if k != "rate"})
            recorder.add(CACHE, f"through nginx / direct, warm cache, {wrk_label}",
                         system.name, warm_wrk["rate"] / direct_wrk["rate"], "x", "higher")


async def _page_paths(port: int, changes: int) -> Path:
    """The URLs of the pages holding the first `changes` changes, in a file for wrk."""
    connection = await http_connect(port)
    paths: list[str] = []
    cursor = 0
    try:
        while len(paths) * PAGE < changes:
            path = f"/changes?since={cursor}&limit={PAGE}"
            status, body = await connection.request("GET", path)
            found = orjson.loads(body)["changes"] if status == 200 else []
            if len(found) < PAGE:
                raise BenchError(f"GET {path} answered {status} with {len(found)} changes")
            paths.append(path)
            cursor = int(found[-1]["_id"])
    finally:
        connection.close()
    directory = PROCESSES.make_dir("pages")
    (directory / "pages.txt").write_text("\n".join(paths) + "\n")
    return directory / "pages.txt"


async def _wrk_pages(port: int, pages: Path, connections: int,
                     server_pids: list[int]) -> dict[str, float]:
    """wrk on `connections` connections requests the listed pages round robin until it has
    as many answers as the consumers of `_catch_up` get (each page once per consumer)."""
    count = connections * len(pages.read_text().split())
    server_before = cpu_seconds(server_pids)
    wrk_before = children_cpu_seconds()
    summary = await asyncio.to_thread(
        run_wrk_preload, f"http://{LOOPBACK}:{port}/changes", "pages.lua", count,
        connections, WRK_SECONDS_MAX, {"BENCH_PAGES_FILE": str(pages)})
    seconds = summary["seconds"]
    if summary["ok"] < count:
        raise BenchError(f"wrk got {summary['ok']} of {count} pages in {seconds:.0f} s")
    return {"rate": summary["ok"] * PAGE / seconds, "seconds": round(seconds, 2),
            "generator_cpu_percent": round(100 * (children_cpu_seconds() - wrk_before)
                                           / seconds, 1),
            "server_cpu_percent": round(100 * (cpu_seconds(server_pids) - server_before)
                                        / seconds, 1),
            # wrk's socket errors (connect, read, write, timeout) and non-2xx answers
            **{k: v for k, v in summary.items() if k.startswith("errors_") and v}}


async def _catch_up(port: int, consumers: int, changes: int,
                    server_pids: list[int]) -> dict[str, float]:
    """`consumers` connections to `port` each read `changes` changes from the start, in
    pages of PAGE, all at once. Only the ids are looked at (counted; the last is the
    next page's `since`), so the generator spends its time receiving, not parsing."""
    connections: list[HttpConnection] = []
    try:
        for first in range(0, consumers, CONNECT_BATCH):
            connections += await asyncio.gather(*(
                http_connect(port) for _ in range(min(CONNECT_BATCH, consumers - first))))

        async def consume(connection: HttpConnection) -> int:
            cursor = 0
            read = 0
            while read < changes:
                status, body = await connection.request(
                    "GET", f"/changes?since={cursor}&limit={PAGE}")
                if status != 200:
                    raise BenchError(f"GET /changes?since={cursor} answered {status}: "
                                     f"{body[:200]!r}")
                count = body.count(b'"_id":')
                if count == 0:
                    break
                read += count
                last = body.rfind(b'"_id":') + 6
                cursor = int(body[last:body.index(b",", last)])
            return read

        server_before = cpu_seconds(server_pids)
        generator_before = self_cpu_seconds()
        began = time.perf_counter()
        read = await asyncio.gather(*(consume(c) for c in connections))
        seconds = time.perf_counter() - began
        generator_cpu = self_cpu_seconds() - generator_before
        server_cpu = cpu_seconds(server_pids) - server_before
    finally:
        for connection in connections:
            connection.close()
    short = [r for r in read if r < changes]
    if short:
        raise BenchError(f"{len(short)} consumers read fewer than {changes} changes "
                         f"(e.g. {short[0]})")
    return {"rate": sum(read) / seconds, "seconds": round(seconds, 2),
            "generator_cpu_percent": round(100 * generator_cpu / seconds, 1),
            "server_cpu_percent": round(100 * server_cpu / seconds, 1) if server_pids else 0}


# l. long-poll scale ---------------------------------------------------------------------


def _raise_open_files(wanted: int) -> tuple[int, str]:
    """Raise RLIMIT_NOFILE (soft and, if need be, hard) towards `wanted`; the servers and
    workers started afterwards inherit it. Returns the soft limit and, when it stays
    below `wanted`, why."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft, ""
    why = ""
    if hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, OSError) as error:
            why = (f"RLIMIT_NOFILE hard limit {hard:,}, and raising it failed ({error}: "
                   "it needs CAP_SYS_RESOURCE)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft, why


def _server_capacity(system: System) -> tuple[int, str]:
    """How many more sockets the node can open: its soft open-file limit less what it
    holds and a margin."""
    pid = system.pids()[0]
    try:
        process = psutil.Process(pid)
        soft, _hard = process.rlimit(psutil.RLIMIT_NOFILE)
        held = process.num_fds()
    except psutil.Error as error:
        raise BenchError(f"cannot read the node's open-file limit: {error}") from error
    return soft - held - FD_MARGIN, f"the node's open-file limit is {soft:,} (it holds {held})"


def _open_files(system: System) -> int:
    try:
        return int(psutil.Process(system.pids()[0]).num_fds())
    except (psutil.Error, IndexError) as error:
        raise BenchError(f"cannot count the node's open files: {error}") from error


def _wait_released(system: System, baseline: int, recorder: Recorder) -> None:
    """Until the node has closed the last run's connections (a loaded node takes seconds
    for 20,000), so that each run can hold as many as the first."""
    deadline = time.monotonic() + RELEASE_SECONDS_MAX
    while (held := _open_files(system)) > baseline + FD_MARGIN:
        if time.monotonic() > deadline:
            recorder.log(f"  {system.name:11s} still holds {held} files "
                         f"{RELEASE_SECONDS_MAX:g} s after the last run (at start: {baseline})")
            return
        time.sleep(0.2)


def run_longpolls(system_cls: type[System], settings: Settings, recorder: Recorder) -> None:
    if system_cls.family not in ("changeagent", "etcd"):
        recorder.skip(LONGPOLLS, system_cls.name,
                      "not run: etcd is the peer here (scenario d has Redis's XREAD BLOCK)")
        return
    target = settings.longpoll_consumers
    limit, limit_why = _raise_open_files(target + 2 * FD_MARGIN)
    system = system_cls(PROCESSES, 1)
    with running(system, recorder, LONGPOLLS) as ok:
        if not ok:
            return
        baseline = _open_files(system)
        for _ in range(settings.runs):
            _wait_released(system, baseline, recorder)
            capacity, capacity_why = _server_capacity(system)
            count = min(target, capacity)
            why = ""
            if count < target:
                why = f"{capacity_why}: at most {capacity:,} consumers" + (
                    f"; {limit_why}" if limit_why else "")
                recorder.log(f"  {system.name:11s} {target:,} consumers asked, {count:,} "
                             f"run: {why}")
            run_async(_longpolls(system, settings, recorder, count, limit, why),
                      settings.scenario_seconds_max)


async def _longpolls(system: System, settings: Settings, recorder: Recorder, count: int,
                     limit: int, why: str) -> None:
    target = settings.longpoll_consumers
    per_worker = max(1, min(settings.longpoll_per_worker, limit - FD_MARGIN))
    per_source = max(1, settings.longpoll_per_source)
    sources = math.ceil(count / per_source)
    if sources > SOURCE_LAST - SOURCE_FIRST + 1:
        raise BenchError(f"{count} consumers at {per_source} per source address need more "
                         f"than 127.0.0.{SOURCE_FIRST}-127.0.0.{SOURCE_LAST}")
    # Each run takes the next source addresses: the last run's closed connections sit in
    # TIME_WAIT on theirs.
    global _next_source
    if _next_source + sources - 1 > SOURCE_LAST:
        _next_source = SOURCE_FIRST
    source_base = _next_source
    _next_source += sources
    control = await system.connect()
    template = await system.subscribe(await system.connect())
    spec = {"family": system.family, "port": system.members[0].port,
            "cursor": getattr(template, "cursor", 0),
            "revision": getattr(template, "start_revision", 0),
            "per_source": per_source, "source_base": source_base}
    template.close()
    already = await asyncio.to_thread(system.waiting_consumers) or 0
    workers = []
    pipes = []
    try:
        for first in range(0, count, per_worker):
            parent, child = _SPAWN.Pipe()
            worker = _SPAWN.Process(target=_longpoll_worker, daemon=True,
                                    name="bench-longpoll-worker",
                                    args=(child, dict(spec, first=first,
                                                      last=min(count, first + per_worker))))
            worker.start()
            workers.append(worker)
            pipes.append(parent)
        connect_began = time.perf_counter()
        helds = [await _receive(p, WORKER_SECONDS_MAX, "a long-poll worker") for p in pipes]
        errors = [h["error"] for h in helds if h.get("error")]
        held = sum(h["held"] for h in helds)
        if held < count:
            why = (f"{why}; " if why else "") + (
                f"{count - held:,} connections failed: {errors[0] if errors else '?'}")
        if system.family == "changeagent":
            confirmed = await _wait_waiting(system, already + held) - already
        else:
            confirmed = sum(h["confirmed"] for h in helds)
        setup_seconds = time.perf_counter() - connect_began
        rss_waiting = rss_bytes(system.pids())
        sent_at = time.perf_counter()
        await system.write(control, 0)
        acked_at = time.perf_counter()
        for pipe in pipes:
            with contextlib.suppress(OSError):  # a worker that failed is gone already
                pipe.send("written")
        results = [await _outcome(p) for p in pipes]
    finally:
        control.close()
        for worker in workers:
            _stop_worker(worker)
    arrived = [t for r in results for t in r["arrived"]]
    generator_cpu = sum(r["cpu"] for r in results)
    visible_at = min([acked_at, *arrived])
    delivered = [t - visible_at for t in arrived]
    label = f"target {target:,}"
    every = max(delivered) if delivered and len(delivered) == held else float("nan")
    extra = {"consumers": held, "waits_confirmed": confirmed, "delivered": len(delivered),
             "workers": len(workers),
             "sources": f"127.0.0.{source_base}-127.0.0.{source_base + sources - 1}",
             "setup_s": round(setup_seconds, 1),
             "write_ms": round((acked_at - sent_at) * 1000, 3),
             "generator_cpu_s": round(generator_cpu, 2)}
    if why:
        extra["limited_by"] = why
    recorder.add(LONGPOLLS, f"waiting consumers held at once, {label}", system.name, held,
                 "consumers", "higher", **extra)
    recorder.add(LONGPOLLS, f"time until all waiting consumers have one new change, {label}",
                 system.name, every * 1000, "ms", "lower", consumers=held,
                 delivered=len(delivered))
    recorder.add(LONGPOLLS, f"median consumer latency, {label}", system.name,
                 median(delivered) * 1000, "ms", "lower", consumers=held)
    recorder.add(LONGPOLLS, f"p99 consumer latency, {label}", system.name,
                 percentile(delivered, 0.99) * 1000, "ms", "lower", consumers=held)
    recorder.add(LONGPOLLS, f"server RSS while the consumers wait, {label}", system.name,
                 rss_waiting / 2**20, "MB", "lower", consumers=held)


async def _outcome(pipe: Connection) -> dict[str, Any]:
    """A worker's arrivals; none from a worker that failed (its error came with `held`)."""
    try:
        answer = await _receive(pipe, ARRIVAL_SECONDS_MAX + 30, "a long-poll worker")
    except BenchError:
        return {"arrived": [], "cpu": 0.0}
    return answer if "arrived" in answer else {"arrived": [], "cpu": 0.0}


def _longpoll_worker(pipe: Connection, spec: dict[str, Any]) -> None:
    try:
        run_async(_hold_waits(pipe, spec), WORKER_SECONDS_MAX)
    except BaseException as error:
        with contextlib.suppress(Exception):
            pipe.send({"held": 0, "confirmed": 0, "arrived": [], "cpu": 0.0,
                       "error": f"{type(error).__name__}: {error}"})
        raise


async def _connect_from(port: int, source: str) -> HttpConnection:
    """A connection to the node from `source` (127.0.0.x): the port is picked at connect
    time for the whole address pair (IP_BIND_ADDRESS_NO_PORT), not at bind time."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (LOOPBACK, port)), 30)
        _, protocol = await loop.create_connection(lambda: HttpConnection(port), sock=sock)
    except BaseException:
        sock.close()
        raise
    return protocol


async def _confirmed(readies: list[asyncio.Future[Any]]) -> int:
    """How many waits the server confirmed (etcd's "created"), waiting while more come."""
    deadline = time.monotonic() + WATCHES_CREATED_SECONDS_MAX
    pending = set(readies)
    last_progress = time.monotonic()
    while pending and time.monotonic() < deadline:
        done, pending = await asyncio.wait(pending, timeout=1.0)
        if done:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > WATCHES_STALLED_SECONDS:
            break
    return sum(1 for r in readies if r.done() and not r.cancelled() and r.exception() is None)


async def _hold_waits(pipe: Connection, spec: dict[str, Any]) -> None:
    from bench.systems.changeagent import LongPoll
    from bench.systems.etcd import Watch

    port = spec["port"]
    subscriptions: list[Any] = []
    error = ""
    for first in range(spec["first"], spec["last"], CONNECT_BATCH):
        indices = range(first, min(spec["last"], first + CONNECT_BATCH))
        made = await asyncio.gather(*(
            _connect_from(port, f"127.0.0.{spec['source_base'] + i // spec['per_source']}")
            for i in indices),
            return_exceptions=True)
        for connection in made:
            if isinstance(connection, BaseException):
                error = error or f"{type(connection).__name__}: {connection}"
            elif spec["family"] == "changeagent":  # also --base's tree, named "base"
                subscriptions.append(LongPoll(connection, spec["cursor"],
                                              LONGPOLL_BLOCK_SECONDS))
            else:
                subscriptions.append(Watch(connection, spec["revision"]))
        if error:
            break
    try:
        arrivals = [s.arm() for s in subscriptions]
        readies = [s.ready for s in subscriptions if s.ready is not None]
        confirmed = len(subscriptions)
        if readies:
            confirmed = await _confirmed(readies)
        cpu_before = self_cpu_seconds()  # waiting and the delivery, not the connects
        pipe.send({"held": len(subscriptions), "confirmed": confirmed, "error": error})
        await asyncio.to_thread(pipe.recv)  # "written"
        if arrivals:
            await asyncio.wait(arrivals, timeout=ARRIVAL_SECONDS_MAX)
        arrived = []
        for subscription, arrival in zip(subscriptions, arrivals, strict=True):
            if (arrival.done() and not arrival.cancelled() and arrival.exception() is None
                    and subscription.advance() >= 1):
                arrived.append(subscription.arrived_at)
        pipe.send({"arrived": arrived, "cpu": self_cpu_seconds() - cpu_before})
    finally:
        for subscription in subscriptions:
            subscription.close()
