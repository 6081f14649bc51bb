"""`python -m bench.trace_write`: where one write's time goes, across every process.

Starts changeagent (standalone or 3 members, as the bench does; `CHANGEAGENT_CMD`
works here too), posts small changes one at a time from one client, records the
system calls of every member with `perf record -e syscalls:...` (the kernel's
tracepoints: no ptrace stops, ~1.4x slower writes instead of strace's ~3x), and
prints the timeline of the traced write with the median latency: each read,
write, pwrite64, fdatasync and futex of the members' event loops and threads, in
ms from the moment the leader (or with --via-follower, the follower posted to)
read the request.

    python -m bench.trace_write                 # 3 members
    python -m bench.trace_write --via-follower  # 3 members, posted to a follower
    python -m bench.trace_write --members 1 --writes 100

Needs `perf` (Debian `linux-perf`) and permission to trace (root). What the
timelines showed is in docs/BENCHMARKS.md, "Where a 1-client write's time goes".
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import procs
from bench.procs import LOOPBACK, PROCESSES
from bench.systems.changeagent import ChangeAgent

SYSCALLS = ("read", "write", "pwrite64", "fdatasync", "futex")
_EVENT = re.compile(r"\s*(\d+)/(\d+)\s+([\d.]+):\s+syscalls:sys_(enter|exit)_(\w+):\s*(.*)")
_FD = re.compile(r"fd: (0x[0-9a-f]+)")


@dataclass
class Event:
    seconds: float
    pid: int
    tid: int
    kind: str  # "enter" or "exit"
    call: str
    detail: str


def _request(number: int) -> bytes:
    body = b'{"data":{"trace":%d}}' % number
    return (
        b"POST /changes HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (LOOPBACK.encode(), len(body), body)
    )


def _post(connection: socket.socket, number: int) -> float:
    """One write, its answer read in full; the seconds it took."""
    started = time.perf_counter()
    connection.sendall(_request(number))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"write refused: {head[:100]!r}")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        rest += connection.recv(65536)
    return time.perf_counter() - started


def _record(pids: list[int], output: Path) -> subprocess.Popen[bytes]:
    """perf recording the members' system calls, from the moment this returns: it
    starts with its events disabled, and answers "ack" on a FIFO once the "enable"
    sent on another has taken effect (so no write is traced half, and a SIGINT never
    reaches a perf that is still attaching)."""
    events = ",".join(
        f"syscalls:sys_{edge}_{call}" for call in SYSCALLS for edge in ("enter", "exit")
    )
    control, ack = output.with_suffix(".control"), output.with_suffix(".ack")
    os.mkfifo(control)
    os.mkfifo(ack)
    command = ["perf", "record", "-q", "-D", "-1", "--control", f"fifo:{control},{ack}",
               "-e", events, "-p", ",".join(map(str, pids)), "-o", str(output)]
    recorder = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    with open(control, "w") as commands, open(ack) as answers:  # perf opens both at start
        commands.write("enable\n")
        commands.flush()
        if answers.readline().strip() != "ack":
            raise RuntimeError("perf did not acknowledge enabling its events")
    return recorder


def _events(data: Path) -> list[Event]:
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,time,event,trace"],
        capture_output=True, text=True, check=True,
    ).stdout
    events = []
    for line in script.splitlines():
        match = _EVENT.match(line)
        if match:
            pid, tid, seconds, kind, call, detail = match.groups()
            events.append(Event(float(seconds), int(pid), int(tid), kind, call, detail))
    return events


def _request_reads(events: list[Event], leader: int, size: int) -> list[int]:
    """Positions of the leader's reads that returned a whole request."""
    found, entered = [], {}
    for position, event in enumerate(events):
        if event.pid != leader or event.call != "read":
            continue
        if event.kind == "enter":
            entered[event.tid] = position
        elif event.detail.strip() == hex(size) and event.tid in entered:
            found.append(entered[event.tid])
    return found


def _describe(event: Event, names: dict[int, str]) -> str:
    where = names.get(event.pid, str(event.pid)) + ("" if event.pid == event.tid else "/thread")
    fd = _FD.search(event.detail)
    detail = f"fd {int(fd.group(1), 16)}" if fd and event.kind == "enter" else event.detail[:24]
    return f"{where:16s} {event.kind:5s} {event.call:9s} {detail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace_write", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, choices=(1, 3), default=3)
    parser.add_argument("--via-follower", action="store_true",
                        help="post to a follower, which forwards to the leader (3 members)")
    parser.add_argument("--writes", type=int, default=50, help="traced writes (default 50)")
    parser.add_argument("--warmup", type=int, default=300, help="untraced writes first")
    arguments = parser.parse_args(argv)
    if shutil.which("perf") is None:
        print("perf is not installed (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    procs.install_cleanup_hooks()
    missing = ChangeAgent.missing_reason()  # also reads --help, which start() uses
    if missing:
        print(missing, file=sys.stderr)
        return 2
    system = ChangeAgent(PROCESSES, arguments.members)
    try:
        system.start()
        leader_index = system.leader_index()
        leader = system.members[leader_index]
        entry = leader
        if arguments.via_follower and arguments.members > 1:
            entry = system.members[system.follower_index()]
        names = {m.process.pid: ("leader" if m is leader else
                                 "entry" if m is entry else f"member {m.index}")
                 for m in system.members if m.process is not None}
        entry_pid = next(m.process.pid for m in system.members
                         if m is entry and m.process is not None)
        connection = socket.create_connection((LOOPBACK, entry.port))
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        untraced = sorted(_post(connection, n) for n in range(arguments.warmup))
        with tempfile.TemporaryDirectory(prefix="bench-trace-") as directory:
            data = Path(directory) / "perf.data"
            recorder = _record(system.pids(), data)
            numbers = range(arguments.warmup, arguments.warmup + arguments.writes)
            traced = [_post(connection, n) for n in numbers]
            recorder.send_signal(signal.SIGINT)
            recorder.wait(timeout=30)
            events = _events(data)
        connection.close()
    finally:
        system.stop()
        PROCESSES.cleanup()
    print(f"untraced p50 {untraced[len(untraced) // 2] * 1000:.3f} ms; "
          f"traced p50 {sorted(traced)[len(traced) // 2] * 1000:.3f} ms")
    starts = _request_reads(events, entry_pid, len(_request(arguments.warmup)))
    if len(starts) < 2:
        print("the trace holds no whole write (perf attached too late?)", file=sys.stderr)
        return 1
    # The write of median latency among those traced whole (each until the next starts).
    spans = sorted((events[b].seconds - events[a].seconds, a, b)
                   for a, b in itertools.pairwise(starts))
    _, first, following = spans[len(spans) // 2]
    began = events[first].seconds
    for event in events[first:following]:
        print(f"{(event.seconds - began) * 1000:8.3f}  {_describe(event, names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
