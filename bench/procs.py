"""Processes, ports and temporary directories started by the bench.

Every server the bench starts goes through `Processes.start`, which records its
pid; `Processes.stop_all` stops them (SIGTERM, then SIGKILL after a grace period),
and it is called from `finally` blocks, from an `atexit` hook and from the
SIGTERM/SIGINT handlers, so a failing or interrupted run leaves nothing behind.
Temporary directories are registered the same way and removed at the end.
Only loopback addresses are ever used.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
STOP_GRACE_SECONDS = 10.0
# A scenario's servers whose data is removed right after: SIGTERM, this long, then SIGKILL.
# A healthy node stops in 0.01-0.2 s; a 3-member changeagent cluster stopped together
# takes 2.5-4.5 s (15 s when its followers stop before its leader), etcd's leader 7 s when
# stopped with its followers (it tries to hand its leadership over first); nothing is lost
# by not waiting for that, since the data directory goes right after.
TEARDOWN_GRACE_SECONDS = 0.5


class BenchError(Exception):
    """A scenario could not run (a server did not start, a peer misbehaved)."""


class SkipScenario(Exception):
    """A scenario does not apply to a system right now; the message says why."""


@dataclass
class Started:
    """One server process started by the bench."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, characters: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""


@dataclass
class Processes:
    """Registry of everything this bench run started (processes and directories)."""

    started: list[Started] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)
    data_root: Path | None = None
    retiring: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def make_dir(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"cabench-{prefix}-", dir=self.data_root))
        self.directories.append(path)
        return path

    def start(self, name: str, argv: Sequence[str], log_dir: Path,
              env: dict[str, str] | None = None) -> Started:
        log_path = log_dir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(
                list(argv), stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        started = Started(name, popen, log_path)
        with self.lock:
            self.started.append(started)
        return started

    def kill9(self, started: Started) -> None:
        """SIGKILL one process by pid (the failover scenario) and reap it."""
        if started.alive():
            os.kill(started.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.popen.wait(timeout=STOP_GRACE_SECONDS)

    def stop(self, started: Started) -> None:
        """SIGTERM, wait, then SIGKILL: always by pid, never by name."""
        if started.alive():
            with contextlib.suppress(ProcessLookupError):
                started.popen.terminate()
            try:
                started.popen.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    started.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    started.popen.wait(timeout=STOP_GRACE_SECONDS)
        with self.lock:
            if started in self.started:
                self.started.remove(started)

    def stop_many(self, processes: Sequence[Started],
                  grace: float = STOP_GRACE_SECONDS) -> list[str]:
        """Stop several processes at once: SIGTERM to each, one shared grace period,
        then SIGKILL to those still running (a cluster's members stop together).

        Returns the names of the processes that needed SIGKILL.
        """
        for started in processes:
            if started.alive():
                with contextlib.suppress(ProcessLookupError):
                    started.popen.terminate()
        deadline = time.monotonic() + grace
        for started in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                started.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        killed = []
        for started in processes:
            if started.alive():
                killed.append(started.name)
                with contextlib.suppress(ProcessLookupError):
                    started.popen.kill()
            self.stop(started)  # reap (SIGTERM, SIGKILL if need be), unregister
        return killed

    def retire(self, groups: Sequence[Sequence[Started]], directory: Path | None,
               report: Callable[[list[str]], None] | None = None) -> None:
        """Teardown in a background thread, so that the next scenario can start its
        servers meanwhile: each group in turn gets `stop_many` with
        TEARDOWN_GRACE_SECONDS, then `directory` is removed; `report` gets the names of
        those that needed SIGKILL, if any. `wait_retired` waits for every such thread:
        scenarios call it before they measure, `cleanup` before the bench exits."""
        def teardown() -> None:
            killed: list[str] = []
            try:
                for group in groups:
                    killed += self.stop_many(group, TEARDOWN_GRACE_SECONDS)
            finally:
                if directory is not None:
                    self.remove_dir(directory)
            if killed and report is not None:
                report(killed)

        thread = threading.Thread(target=teardown, name="bench-teardown", daemon=True)
        with self.lock:
            self.retiring.append(thread)
        thread.start()

    def wait_retired(self) -> None:
        with self.lock:
            threads, self.retiring = self.retiring, []
        for thread in threads:
            thread.join()

    def stop_all(self) -> None:
        with self.lock:
            started = list(reversed(self.started))
        for one in started:
            self.stop(one)

    def remove_dir(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        with self.lock:
            if path in self.directories:
                self.directories.remove(path)

    def cleanup(self) -> None:
        self.wait_retired()
        self.stop_all()
        with self.lock:
            directories = list(self.directories)
        for path in directories:
            self.remove_dir(path)


PROCESSES = Processes()


def _on_signal(signum: int, _frame: object) -> None:
    # Raise so that `finally` blocks run; atexit then catches anything left.
    raise SystemExit(128 + signum)


def install_cleanup_hooks() -> None:
    atexit.register(PROCESSES.cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def measure_in_turn(names: Sequence[str], rounds: int,
                    missing_reason: Callable[[str], str | None],
                    measure: Callable[[str], str]) -> None:
    """Measure each named system `rounds` times, the systems in turn, printing each
    result as it comes (the probes beside the bench: `cpu_per_write`,
    `replication_floor`); whatever they started is stopped at the end."""
    install_cleanup_hooks()
    try:
        for _ in range(rounds):
            for name in names:
                missing = missing_reason(name)
                if missing:
                    print(f"{name}: skipped, {missing}")
                    continue
                print(measure(name), flush=True)
    finally:
        PROCESSES.cleanup()


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (inherited by servers we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_handed_out: set[int] = set()


def free_port() -> int:
    """A currently free loopback TCP port, never handed out twice in one run."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise BenchError("no free loopback port")


# Loopback only: never route the bench's own requests through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 1.0, data: bytes | None = None) -> int | None:
    """Status code of one small HTTP request, or None when nothing answers."""
    request = urllib.request.Request(url, data=data)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def wait_until(predicate: object, timeout: float, what: str, started: Started | None = None,
               interval: float = 0.05) -> None:
    """Poll `predicate` until it returns true; raise BenchError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        if started is not None and not started.alive():
            raise BenchError(f"{started.name} exited while waiting for {what}:\n"
                             f"{started.log_tail()}")
        time.sleep(interval)
    tail = f":\n{started.log_tail()}" if started is not None else ""
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident set size of the given processes and their children."""
    total = 0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            total += process.memory_info().rss
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        except psutil.Error:
            continue
    return total


def accepts_connections(port: int, timeout: float = 1.0) -> bool:
    """Whether something listens on loopback `port` (a TCP connection is accepted)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds consumed so far by the given processes and children."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            total += times.user + times.system
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
        except psutil.Error:
            continue
    return total


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """CPU of terminated, reaped children (used to charge wrk's CPU to the generator)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def env_without_proxies() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        env.pop(key, None)
    return env


def members_import_this_tree() -> None:
    """Members started from now on find this tree's `bench` package first (their
    command is a `python -m bench.…` entry that wraps changeagent's own main)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
