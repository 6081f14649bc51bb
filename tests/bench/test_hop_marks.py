"""`python -m bench.hop_marks` marks every hop of a write on a real 3-member
changeagent and prints the timeline and where the leader was at each write's first
acknowledgement. Its patch points must all exist: a renamed function fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from bench.hop_marks import (
    PATCH_POINTS,
    after_answer,
    durability,
    install,
    leader_at_first_ack,
    request_starts,
    timeline,
)

from changeagent.transport.errors import FrameError

REPO = Path(__file__).resolve().parents[2]


def test_every_patch_point_exists_and_marks_its_calls() -> None:
    import importlib

    originals = []
    for module_name, owner_name, function, _, _ in PATCH_POINTS:
        owner = importlib.import_module(module_name)
        owner = getattr(owner, owner_name) if owner_name else owner
        originals.append((owner, function, getattr(owner, function)))
    marks: list[tuple[int, str]] = []
    try:
        install(marks)
        from changeagent.raft.quorum import quorum_size  # not patched: nothing marked
        from changeagent.transport import wslink

        assert quorum_size(3) == 2 and marks == []
        with pytest.raises(FrameError):
            wslink.decode_frame(b"\xc1", 100)  # patched: marked even when it raises
        assert [name for _, name in marks] == ["decode"]
    finally:
        for owner, function, original in originals:
            setattr(owner, function, original)


def test_the_analysis_reads_marks_of_three_processes() -> None:
    # leader 1 is posted to; follower 2 acknowledges at 300 while the leader is in
    # its COMMIT, which the leader reads at 450 after it ends.
    marks = {
        1: [(0, "http_rx"), (10, "propose"), (100, "commit"), (400, "commit/x"),
            (450, "rx"), (500, "answer"), (520, "answer/x")],
        2: [(50, "rx"), (250, "persisted"), (290, "sock_write"), (300, "sock_write/x")],
        3: [(60, "rx")],
    }  # fmt: skip
    roles = {1: "leader", 2: "follower 1", 3: "follower 2"}
    lines = timeline(marks, 1, roles)
    assert lines[0].split() == ["0.0", "leader", "http_rx#1"]
    assert lines[-1].split() == ["0.5", "leader", "answer/x#1"]
    assert any(line.split()[1:] == ["follower", "1", "sock_write/x#1"] for line in lines)
    [state] = leader_at_first_ack(marks, 1)
    assert state.split() == ["commit", "100.0", "%", "read", "after", "0.1", "µs"]


def test_when_each_write_was_durable_and_how_long_after_the_commit_it_was_answered() -> None:
    # Two writes posted to the leader (1). The first: the followers' COMMITs return
    # at 300 and 500 µs, the leader's at 400 (the second: the commit), the answer at
    # 600. The second: followers at 250 and 350 (the commit), the leader last at 700,
    # the answer at 900.
    marks = {
        1: [(0, "http_rx"), (100_000, "commit"), (400_000, "commit/x"), (600_000, "answer/x"),
            (1_000_000, "http_rx"), (1_100_000, "commit"), (1_700_000, "commit/x"),
            (1_900_000, "answer/x")],
        2: [(150_000, "commit"), (300_000, "commit/x"),
            (1_150_000, "commit"), (1_250_000, "commit/x")],
        3: [(200_000, "commit"), (500_000, "commit/x"),
            (1_200_000, "commit"), (1_350_000, "commit/x")],
    }  # fmt: skip
    roles = {1: "leader", 2: "follower 1", 3: "follower 2"}
    leader, first, second, answered = durability(marks, 1, roles)
    assert leader.split() == [
        "leader", "COMMIT", "returned", "550.0", "µs;", "COMMIT", "p50", "450.0,", "mean",
        "450.0;", "last", "of", "three", "in", "50.0", "%",
    ]  # fmt: skip
    assert "returned   275.0 µs; COMMIT p50  125.0, mean  125.0; last of three in  0.0 %" in first
    assert "returned   425.0 µs; COMMIT p50  225.0, mean  225.0; last of three in 50.0 %" in second
    assert answered.split()[3:5] == ["375.0", "µs"]  # the median of 200 and 550
    assert answered.endswith("(median of 2 writes)")
    assert durability({1: marks[1]}, 1, roles) == []  # one member: no quorum to find
    # The same writes as if posted to follower 2 (pid 3) with the leader at pid 1: its
    # answer marks moved there. Both held the first write at 500 (answer 600: 100 after),
    # the second at 700 (answer 900: 200 after); the leader was first in the first only.
    via = {pid: [mark for mark in found if mark[1] not in ("http_rx", "answer/x")]
           for pid, found in marks.items()}  # fmt: skip
    via[3] = sorted(via[3] + [(0, "http_rx"), (600_000, "answer/x"),
                              (1_000_000, "http_rx"), (1_900_000, "answer/x")])  # fmt: skip
    *_, both = durability(via, 3, roles, leader=1)
    assert both.split()[:2] == ["150.0", "µs"]  # the median of 100 and 200
    assert both.endswith("returned first in 50.0 %")


def test_a_write_starts_at_its_requests_bytes_not_at_the_body_read() -> None:
    # aiohttp calls data_received(b"") when the handler reads the body: the second
    # http_rx of a write is no new write, and the next one starts after the answer.
    found = [(0, "http_rx"), (85_000, "http_rx"), (100_000, "propose"), (500_000, "answer/x"),
             (560_000, "http_rx"), (640_000, "http_rx"), (900_000, "answer/x")]  # fmt: skip
    assert request_starts(found) == [0, 560_000]
    lines = [line.split() for line in timeline({1: found}, 1, {1: "leader"})]
    assert lines[:2] == [["0.0", "leader", "http_rx#1"], ["82.5", "leader", "http_rx#2"]]
    assert lines[-1] == ["420.0", "leader", "answer/x#1"]


def test_what_the_member_does_between_an_answer_and_the_next_request() -> None:
    # Two gaps: 40 µs with a peer read in it, 60 µs with nothing marked; the request
    # came after the leader's step returned in the first, after `pq` in the second.
    found = [(0, "http_rx"), (500_000, "answer/x"), (510_000, "rx"), (520_000, "step/x"),
             (540_000, "http_rx"), (600_000, "http_rx"), (900_000, "answer/x"),
             (905_000, "pq"), (960_000, "http_rx")]  # fmt: skip
    gaps, inside, before = after_answer(found)
    assert gaps.split() == ["answer", "to", "next", "request:", "median", "50.0", "µs", "over", "2"]
    assert inside.endswith(": pq 50 %, rx 50 %, step/x 50 %")
    assert before.endswith(": pq 50 %, step/x 50 %")
    assert after_answer([(0, "http_rx")]) == []


@pytest.mark.parametrize(
    ("client", "count"), [("asyncio", ["--writes", "150"]), ("wrk", ["--seconds", "1"])]
)
def test_hop_marks_prints_a_timeline_and_the_leaders_state(client: str, count: list[str]) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.hop_marks", "--client", client, *count, "--warmup", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=180)  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    written = re.search(r"medians of (\d+) writes, (\w+)", output)
    assert written is not None, output
    assert written[2] == client, output
    assert int(written[1]) == 150 if client == "asyncio" else int(written[1]) > 100, output
    gap = re.search(r"answer to next request: median ([\d.]+) µs over (\d+)", output)
    assert gap is not None and float(gap[1]) > 0 and int(gap[2]) > 0, output
    for hop in ("leader       http_rx#1", "leader       commit/x#1", "leader       answer/x#1"):
        assert hop in output, output
    assert re.search(r"follower \d\s+commit/x#1", output), output
    answered = re.search(r"the answer came ([\d.]+) µs after the second COMMIT", output)
    assert answered is not None and float(answered[1]) > 0, output
    assert len(re.findall(r"COMMIT returned .* last of three in", output)) == 3, output
    states = re.findall(r"^  (\S+)\s+([\d.]+) %\s+read after\s+[\d.]+ µs$", output, re.M)
    shares = [float(share) for _, share in states]
    assert shares and all(share > 0 for share in shares) and sum(shares) <= 100.1, output
