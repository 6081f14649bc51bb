"""`python -m bench.cpu_per_write` measures a real 3-member changeagent and prints, for
each member, the CPU one write cost, split by thread."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_tool(*arguments: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.cpu_per_write", *arguments],
        cwd=REPO, capture_output=True, text=True, timeout=timeout)


def measured(*arguments: str) -> str:
    """The tool's output, after checking that it ran to the end."""
    completed = run_tool("--systems", "changeagent", "--warmup", "20", "--rounds", "1",
                         *arguments)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    return output


def test_cpu_per_write_reports_every_member_and_its_threads() -> None:
    output = measured("--writes", "200")
    summary = re.search(
        r"changeagent: p50 ([\d.]+) ms, [\d,]+ writes/s \(1 client\), "
        r"CPU per write (\d+) us in all",
        output,
    )
    assert summary is not None, output
    assert float(summary.group(1)) > 0
    members = re.findall(r"member (\d) \((leader|follower)\): (\d+) us \(user\+system: (.*)\)",
                         output)
    assert [m[0] for m in members] == ["0", "1", "2"], output
    assert [m[1] for m in members].count("leader") == 1, output
    # Each member's own figure is at most what all of them cost together, and every
    # member's event loop (its main thread) works on each write.
    assert all(0 < int(m[2]) <= int(summary.group(2)) for m in members), output
    assert all(m[3].startswith("main ") or ", main " in m[3] for m in members), output


def test_cpu_per_write_without_fsync_runs_every_member_without_it() -> None:
    """`--no-fsync`: every member ran the entry that turns SQLite's fsync off (the run
    checks each member's mark and fails otherwise), and the figures are labelled so."""
    output = measured("--writes", "100", "--no-fsync", "--via-follower")
    assert re.search(
        r"changeagent, without fsync: p50 [\d.]+ ms, [\d,]+ writes/s \(1 client\), "
        r"CPU per write \d+ us",
        output,
    )
    posted = re.findall(r"member \d \(follower, posted to\): \d+ us", output)
    assert len(posted) == 1, output


def test_cpu_per_write_under_wrk_divides_by_the_writes_wrk_saw() -> None:
    """`--clients N`: wrk loads the members (through a follower here) for `--seconds`;
    the figures are per write wrk saw acknowledged, for every member."""
    output = measured("--via-follower", "--clients", "4", "--seconds", "1")
    summary = re.search(
        r"changeagent: p50 [\d.]+ ms, ([\d,]+) writes/s \(4 clients\), "
        r"CPU per write (\d+) us in all, [\d.]+ CPU-s over ([\d.]+) s",
        output,
    )
    assert summary is not None, output
    assert int(summary.group(1).replace(",", "")) > 0 and int(summary.group(2)) > 0
    assert float(summary.group(3)) >= 0.9  # wrk's own duration, not the warm-up's
    members = re.findall(r"member (\d) \((leader|follower(?:, posted to)?)\): \d+ us", output)
    assert [m[0] for m in members] == ["0", "1", "2"], output
    assert [m[1] for m in members].count("follower, posted to") == 1, output


def test_cpu_per_write_refuses_no_clients() -> None:
    completed = run_tool("--clients", "0", timeout=60)
    assert completed.returncode == 2
    assert "--clients must be 1 or more" in completed.stderr


def test_cpu_per_write_without_fsync_refuses_other_systems() -> None:
    completed = run_tool("--systems", "redis", "--no-fsync", timeout=60)
    assert completed.returncode == 2
    assert "--no-fsync knows changeagent and etcd, not redis" in completed.stderr


def test_serve_no_fsync_turns_off_the_storage_fsync(tmp_path: Path) -> None:
    """The entry changes the very setting the storage opens its writer with: a
    writer connection opened after it (as the member's server does) has
    `synchronous` 0 (OFF), where the storage's own default is 2 (FULL)."""
    marks, data = tmp_path / "marks", tmp_path / "data"
    marks.mkdir()
    data.mkdir()
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bench import cpu_per_write\n"
        "from changeagent.cli import main as cli\n"
        "from changeagent.storage import schema\n"
        "def opened(argv):\n"
        "    connection = schema.connect_writer(Path(argv[0]))\n"
        "    print('synchronous', connection.execute('PRAGMA synchronous').fetchone()[0])\n"
        "    return 0\n"
        "print('before', schema._WRITER_PRAGMAS['synchronous'])\n"
        "cli.main = opened\n"
        "sys.exit(cpu_per_write.main(['serve-no-fsync', sys.argv[1]]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(data)], cwd=REPO, capture_output=True, text=True,
        timeout=60, env={**os.environ, "CPU_PER_WRITE_NO_FSYNC_MARKS": str(marks)})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split("\n")[:2] == ["before FULL", "synchronous 0"], completed.stdout
    [mark] = list(marks.iterdir())
    assert mark.read_text() == "synchronous=OFF"
