"""`python -m bench.hop_marks`: where a 1-client write waits, hop by hop, on every member.

Starts a 3-member changeagent as the bench does, each member through this module's
`serve` entry, which wraps the functions at each hop (HTTP and peer reads, frame
decode, Raft step and Ready, `BEGIN` / rows / COMMIT, each socket write, the answer)
to append a `perf_counter_ns` mark (~1-2 µs each). One change at a time is posted
(after warm-up) by the bench's asyncio client, or for `--seconds` by wrk (which
sends the next request the moment it has an answer); then every member writes its
marks to a file, and this prints:

- the median timeline of a write: µs from its request's bytes at the member posted
  to, for each mark seen in most writes (`name/x`: the wrapped call returned);
- where the leader was when each write's first acknowledgement was written (idle,
  inside its own COMMIT, ...) and how long it took to read it from there;
- what the member posted to did between an answer and the next request;
- when each write was durable on each member (its COMMIT returned), each member's
  fsync and how often it was the last of the three, and how long after the second
  COMMIT (the quorum's: the commit) the answer came.

    python -m bench.hop_marks                  # posted to the leader
    python -m bench.hop_marks --via-follower   # posted to a follower
    python -m bench.hop_marks --writes 3000 --warmup 300
    python -m bench.hop_marks --client wrk --seconds 5

Clocks: `perf_counter_ns` is CLOCK_MONOTONIC, one clock for every process of the
machine. What the marks showed is in docs/BENCHMARKS.md, "Issue 15: a forwarded write
awaited in its handler's task; where a 1-client write waits".
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import procs
from bench.cpu_per_write import write_one_at_a_time
from bench.procs import LOOPBACK, PROCESSES
from bench.systems.changeagent import ChangeAgent
from bench.wrk import run_wrk

DIR_VARIABLE = "HOP_MARKS_DIR"
DUMP_POLL_S = 0.05
DUMP_WAIT_S = 30.0
WINDOW_NS = 5_000_000  # a write's marks: at most this long after its request
SEEN_SHARE_MIN = 0.6  # a mark is listed when at least this share of the writes had it
OCCURRENCES_MAX = 2  # the first two occurrences of a name per process (two APPENDs)

# (module, owner in it or "", function, mark, whether its return is marked too)
PATCH_POINTS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("changeagent.api.front_door", "FrontConnection", "data_received", "http_rx", False),
    ("aiohttp.web_protocol", "RequestHandler", "data_received", "http_rx", False),
    ("changeagent.transport.wslink", "WsLinkProtocol", "data_received", "rx", False),
    ("changeagent.transport.wslink", "", "decode_frame", "decode", False),
    ("changeagent.transport.transport", "Transport", "_deliver", "deliver", False),
    ("changeagent.transport.transport", "Transport", "_start_request", "start_request", False),
    ("changeagent.transport.transport", "Transport", "_resolve_reply", "resolve_reply", False),
    ("changeagent.transport.transport", "_EarlyReply", "__call__", "early_reply", True),
    ("changeagent.transport.transport", "Transport", "send", "send", True),
    ("changeagent.transport.link_protocol", "LinkProtocol", "write", "sock_write", True),
    ("changeagent.node.leader_link", "LeaderLink", "forward_change", "forward", False),
    ("changeagent.node.driver", "RaftDriver", "step", "step", True),
    ("changeagent.node.driver", "RaftDriver", "propose", "propose", True),
    ("changeagent.node.driver", "RaftDriver", "_propose_queued", "pq", False),
    ("changeagent.node.driver", "RaftDriver", "_handle", "handle", False),
    ("changeagent.raft.core", "RaftNode", "ready", "ready", True),
    ("changeagent.raft.core", "RaftNode", "step", "core_step", True),
    ("changeagent.raft.core", "RaftNode", "has_ready", "has_ready", True),
    ("changeagent.node.driver", "RaftDriver", "_handle_now", "handle_now", True),
    ("changeagent.raft.core", "RaftNode", "propose", "core_propose", True),
    ("aiohttp.web_protocol", "RequestHandler", "_handle_request", "aio_handle_request", False),
    ("aiohttp.web_app", "Application", "_handle", "aio_app_handle", False),
    ("changeagent.api.changes", "", "post_change", "post_change", False),
    ("changeagent.api.front_door", "FrontConnection", "_answer", "door_answer", False),
    ("changeagent.node.changelog", "", "encode_change", "encode_change", True),
    ("changeagent.api.changes", "", "parse_change_body", "parse_body", True),
    ("changeagent.node.node", "Node", "append_change", "append_change", False),
    ("changeagent.node.ready_plan", "ReadyPlanner", "plan", "plan", True),
    ("changeagent.transport.transport", "", "encode_frame", "encode_frame", True),
    ("changeagent.node.ready_plan", "ReadyPlanner", "persisted", "persisted", False),
    ("changeagent.storage.store", "Storage", "_write_now", "write_now", True),
    ("changeagent.storage.store", "Storage", "_publish", "publish", True),
    ("changeagent.storage.writer", "GroupTransaction", "__init__", "begin", True),
    ("changeagent.storage.writer", "GroupTransaction", "prepare_commit", "rows", True),
    ("changeagent.storage.writer", "GroupTransaction", "commit", "commit", True),
    ("changeagent.node.applied", "AppliedIndex", "advance", "applied", False),
    ("changeagent.api.wire", "WriteDelivery", "__call__", "answer", True),
)

Marks = list[tuple[int, str]]


# ------------------------------------------------------------------ inside a member


def install(marks: Marks) -> None:
    """Wrap every patch point so that it appends to `marks`; a missing one raises
    (a renamed function must fail this tool, not silently leave a hop unmarked)."""
    import importlib

    for module_name, owner_name, function, mark, on_return in PATCH_POINTS:
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        original = getattr(owner, function)
        setattr(owner, function, _wrapped(original, marks, mark, on_return))


def _wrapped(
    original: Callable[..., Any], marks: Marks, mark: str, on_return: bool
) -> Callable[..., Any]:
    now = time.perf_counter_ns
    append = marks.append
    if not on_return:

        @functools.wraps(original)
        def marked(*arguments: Any, **options: Any) -> Any:
            append((now(), mark))
            return original(*arguments, **options)

        return marked
    returned = mark + "/x"

    @functools.wraps(original)
    def marked_both(*arguments: Any, **options: Any) -> Any:
        append((now(), mark))
        try:
            return original(*arguments, **options)
        finally:
            append((now(), returned))

    return marked_both


def _dump_when_asked(marks: Marks, directory: Path) -> None:
    """A thread: once `<directory>/dump` exists, write the marks, then `done.<pid>`."""
    pid = os.getpid()
    while not (directory / "dump").exists():
        time.sleep(DUMP_POLL_S)
    snapshot = list(marks)
    path = directory / f"marks.{pid}"
    path.write_text("".join(f"{at} {name}\n" for at, name in snapshot))
    (directory / f"done.{pid}").write_text(str(len(snapshot)))


def serve(argv: list[str]) -> int:
    """A member: install the marks, then run changeagent's own main with `argv`."""
    from changeagent.cli.main import main as changeagent_main

    marks: Marks = []
    install(marks)
    directory = Path(os.environ[DIR_VARIABLE])
    threading.Thread(target=_dump_when_asked, args=(marks, directory), daemon=True).start()
    return int(changeagent_main(argv) or 0)


# ------------------------------------------------------------------ the runner


def _collect(directory: Path, pids: list[int]) -> dict[int, Marks]:
    (directory / "dump").write_text("")
    deadline = time.monotonic() + DUMP_WAIT_S
    while not all((directory / f"done.{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError("a member did not write its marks in time")
        time.sleep(DUMP_POLL_S)
    collected = {}
    for pid in pids:
        lines = (directory / f"marks.{pid}").read_text().split("\n")
        pairs = (line.split() for line in lines if line)
        collected[pid] = [(int(at), name) for at, name in pairs]
    return collected


def request_starts(found: Marks) -> list[int]:
    """When each write's request reached the member: its first `http_rx` after the
    answer before (the front door's `data_received`; aiohttp's, for a write it serves).
    Not every `http_rx`: aiohttp calls `data_received(b"")` itself when its handler
    reads the body (`resume_reading`), ~85 µs after the bytes came."""
    starts: list[int] = []
    answered = True
    for at, name in found:
        if name == "http_rx" and answered:
            starts.append(at)
            answered = False
        elif name == "answer/x":
            answered = True
    return starts


def timeline(marks: dict[int, Marks], posted_to: int, roles: dict[int, str]) -> list[str]:
    """The median µs of each mark after a write's request reached `posted_to`."""
    starts = request_starts(marks[posted_to])
    answered = [at for at, name in marks[posted_to] if name == "answer/x"]
    times = {pid: [at for at, _ in found] for pid, found in marks.items()}
    seen: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for start in starts:
        # A write's marks: from its request until its answer is written.
        following = bisect.bisect_left(answered, start)
        end = answered[following] if following < len(answered) else start + WINDOW_NS
        end = min(end, start + WINDOW_NS)
        for pid, found in marks.items():
            position = bisect.bisect_left(times[pid], start)
            counted: collections.Counter[str] = collections.Counter()
            while position < len(found) and found[position][0] <= end:
                at, name = found[position]
                counted[name] += 1
                if counted[name] <= OCCURRENCES_MAX:
                    seen[roles[pid], f"{name}#{counted[name]}"].append((at - start) / 1e3)
                position += 1
    rows = sorted(
        (statistics.median(values), role, name)
        for (role, name), values in seen.items()
        if len(values) >= SEEN_SHARE_MIN * len(starts)
    )
    return [f"{at:9.1f}  {role:12s} {name}" for at, role, name in rows]


def leader_at_first_ack(marks: dict[int, Marks], leader: int) -> list[str]:
    """Per write, the leader's last mark before its first acknowledgement was written
    (a follower's socket write right after persisting), and the wait until the
    leader's next peer read."""
    acks = sorted(
        at
        for pid, found in marks.items()
        if pid != leader
        for at in _acknowledgements(found)
    )
    found = marks[leader]
    times = [at for at, _ in found]
    states: dict[str, list[float]] = collections.defaultdict(list)
    for proposed in (at for at, name in found if name == "propose"):
        first = bisect.bisect_left(acks, proposed)
        if first >= len(acks):
            break
        ack = acks[first]
        position = bisect.bisect_left(times, ack)
        state = found[position - 1][1]
        while position < len(found) and found[position][1] != "rx":
            position += 1
        if position < len(found):
            states[state].append((found[position][0] - ack) / 1e3)
    total = sum(len(waits) for waits in states.values()) or 1
    ordered = sorted(states.items(), key=lambda item: -len(item[1]))
    return [
        f"  {state:14s} {len(waits) / total * 100:5.1f} %   "
        f"read after {statistics.median(waits):7.1f} µs"
        for state, waits in ordered[:8]
    ]


def durability(
    marks: dict[int, Marks], posted_to: int, roles: dict[int, str], leader: int | None = None
) -> list[str]:
    """Per write (from its request to its answer at `posted_to`): when each member's
    COMMIT returned (its copy durable), when the second of them did (the quorum held
    it: committed, on three members), and how long after that the answer came; each
    member's fsync (COMMIT to its return), and how often each was the last of three.
    Posted to a follower (`leader` given, another member): also how long after both
    it and the leader held the write the answer came, and how often the leader's
    COMMIT returned first (what a follower that knew the leader's durability could
    gain: with three voters the two are a quorum)."""
    pids = sorted(marks)
    if len(pids) < 3:
        return []  # no quorum to find
    starts = request_starts(marks[posted_to])
    answered = [at for at, name in marks[posted_to] if name == "answer/x"]
    begun = {pid: [at for at, name in marks[pid] if name == "commit"] for pid in pids}
    ended = {pid: [at for at, name in marks[pid] if name == "commit/x"] for pid in pids}
    durable: dict[int, list[float]] = {pid: [] for pid in pids}
    fsyncs: dict[int, list[float]] = {pid: [] for pid in pids}
    last: collections.Counter[int] = collections.Counter()
    after_quorum: list[float] = []
    after_both: list[float] = []
    leader_first = 0
    for start in starts:
        following = bisect.bisect_left(answered, start)
        if following >= len(answered):
            break
        answer = answered[following]
        returned = {}
        for pid in pids:
            position = bisect.bisect_left(ended[pid], start)
            if position < len(ended[pid]) and ended[pid][position] <= start + WINDOW_NS:
                returned[pid] = ended[pid][position]
                began = bisect.bisect_right(begun[pid], returned[pid]) - 1
                if began >= 0 and begun[pid][began] >= start:
                    fsyncs[pid].append((returned[pid] - begun[pid][began]) / 1e3)
        if len(returned) != len(pids):
            continue
        for pid, at in returned.items():
            durable[pid].append((at - start) / 1e3)
        order = sorted(returned, key=returned.__getitem__)
        last[order[-1]] += 1
        after_quorum.append((answer - returned[order[1]]) / 1e3)
        if leader is not None and leader != posted_to:
            after_both.append((answer - max(returned[leader], returned[posted_to])) / 1e3)
            leader_first += returned[leader] < returned[posted_to]
    if not after_quorum:
        return []
    writes = len(after_quorum)
    lines = []
    for pid in pids:
        if not fsyncs[pid]:
            continue
        commit_p50, commit_mean = statistics.median(fsyncs[pid]), statistics.mean(fsyncs[pid])
        lines.append(
            f"  {roles[pid]:24s} COMMIT returned {statistics.median(durable[pid]):7.1f} µs; "
            f"COMMIT p50 {commit_p50:6.1f}, mean {commit_mean:6.1f}; "
            f"last of three in {last[pid] / writes * 100:4.1f} %"
        )
    lines.append(
        f"  the answer came {statistics.median(after_quorum):.1f} µs after the second COMMIT "
        f"returned (median of {writes} writes)"
    )
    if after_both:
        lines.append(
            f"  {statistics.median(after_both):.1f} µs after both the leader and the member "
            f"posted to held it; the leader's COMMIT returned first in "
            f"{leader_first / writes * 100:.1f} %"
        )
    return lines


def _acknowledgements(found: Marks) -> list[int]:
    acks, persisted = [], False
    for at, name in found:
        if name == "persisted":
            persisted = True
        elif name == "sock_write/x" and persisted:
            acks.append(at)
            persisted = False
    return acks


def _drop_warmup(marks: dict[int, Marks], posted_to: int, warmup: int) -> None:
    """Keep the marks from the first measured write's request on, in every process."""
    starts = request_starts(marks[posted_to])
    if len(starts) > warmup:
        cut = starts[warmup]
        for pid, found in marks.items():
            marks[pid] = [(at, name) for at, name in found if at >= cut]


def after_answer(found: Marks) -> list[str]:
    """What the member posted to did between each answer and the next request's bytes:
    the client's turn-around (3 members: wrk ~57 µs, the bench's asyncio client ~173),
    the marks in that gap, and the last mark before the request came."""
    gaps: list[float] = []
    inside: collections.Counter[str] = collections.Counter()
    last_before: collections.Counter[str] = collections.Counter()
    answered_at = None
    previous = ""
    for at, name in found:
        if name == "answer/x":
            answered_at = at
            seen: set[str] = set()
        elif answered_at is not None and name == "http_rx":
            gaps.append((at - answered_at) / 1e3)
            last_before[previous] += 1
            inside.update(seen)
            answered_at = None
        elif answered_at is not None:
            seen.add(name)
        previous = name
    if not gaps:
        return []
    total = len(gaps)
    return [
        f"  answer to next request: median {statistics.median(gaps):.1f} µs over {total}",
        "  marks between them (share of gaps): " + ", ".join(
            f"{name} {count / total * 100:.0f} %" for name, count in _most_common(inside, 12)
        ),
        "  last mark before the request: " + ", ".join(
            f"{name} {count / total * 100:.0f} %" for name, count in _most_common(last_before, 6)
        ),
    ]


def _most_common(counted: collections.Counter[str], count: int) -> list[tuple[str, int]]:
    return sorted(counted.items(), key=lambda item: (-item[1], item[0]))[:count]


def _post(system: ChangeAgent, member: int, client: str, writes: int, seconds: float) -> None:
    if client == "asyncio":
        asyncio.run(write_one_at_a_time(system, writes, 0, member))
        return
    url = f"http://{LOOPBACK}:{system.members[member].port}/changes"
    run_wrk(url, "changeagent_post.lua", 1, seconds, "hop-marks")


def measure(writes: int, warmup: int, via_follower: bool, client: str = "asyncio",
            seconds: float = 5.0) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="hop-marks-") as name:
        directory = Path(name)
        os.environ[DIR_VARIABLE] = str(directory)
        os.environ["CHANGEAGENT_CMD"] = f"{sys.executable} -m bench.hop_marks serve"
        procs.members_import_this_tree()
        system = ChangeAgent(PROCESSES, 3)
        system.start()
        try:
            leader = system.leader_index()
            member = system.follower_index() if via_follower else leader
            _post(system, member, client, warmup + writes, seconds)
            pids = system.pids()
            marks = _collect(directory, pids)
        finally:
            system.stop()
    roles = {
        pid: "leader" if index == leader else f"follower {index}" for index, pid in enumerate(pids)
    }
    roles[pids[member]] += " (posted to)" if via_follower else ""
    _drop_warmup(marks, pids[member], warmup)
    measured = len(request_starts(marks[pids[member]]))
    return [
        f"µs after the request reached {roles[pids[member]]} (medians of {measured} writes, "
        f"{client}):",
        *timeline(marks, pids[member], roles),
        "the leader when a write's first acknowledgement was written:",
        *leader_at_first_ack(marks, pids[leader]),
        f"{roles[pids[member]]} between an answer and the next request:",
        *after_answer(marks[pids[member]]),
        "each write durable on each member, µs after its request (medians):",
        *durability(marks, pids[member], roles, pids[leader]),
    ]


def main(argv: list[str] | None = None) -> int:
    arguments_list = sys.argv[1:] if argv is None else argv
    if arguments_list[:1] == ["serve"]:
        return serve(arguments_list[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.hop_marks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--via-follower", action="store_true",
                        help="post every write to a follower: the forwarded path")
    parser.add_argument("--client", choices=("asyncio", "wrk"), default="asyncio",
                        help="the bench's asyncio client (--writes of them) or wrk at one "
                             "connection (--seconds; it sends the next request at once)")
    parser.add_argument("--seconds", type=float, default=5.0)
    arguments = parser.parse_args(arguments_list)
    procs.install_cleanup_hooks()
    try:
        print("\n".join(measure(arguments.writes, arguments.warmup, arguments.via_follower,
                                arguments.client, arguments.seconds)))
    finally:
        PROCESSES.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
