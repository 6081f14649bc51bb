"""`python -m bench.cpu_per_write` measures a real 3-member changeagent and prints, for
each member, the CPU one write cost, split by thread."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cpu_per_write_reports_every_member_and_its_threads() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.cpu_per_write", "--systems", "changeagent",
         "--writes", "200", "--warmup", "20", "--rounds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    summary = re.search(r"changeagent: p50 ([\d.]+) ms, CPU per write (\d+) us in all", output)
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
