"""`python -m bench.fsync_floor` times WAL-shaped writes + fdatasync, 1 and 3 at once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_fsync_floor_reports_each_process_and_cleans_up(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.fsync_floor", "--dir", str(tmp_path), "--rounds", "20"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    rows = re.findall(r"(\d) at once, (\d) frames: p50 ([\d., ]+) ms", output)
    assert [(row[0], row[1]) for row in rows] == [
        (processes, frames) for processes in "13" for frames in "124"
    ], output
    for processes, _, shown in rows:
        medians = [float(value) for value in shown.split(", ")]
        assert len(medians) == int(processes) and all(value > 0 for value in medians)
    assert list(tmp_path.iterdir()) == []  # its files and directory are gone
