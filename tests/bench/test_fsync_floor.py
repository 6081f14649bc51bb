"""`python -m bench.fsync_floor` times WAL-shaped writes + fdatasync, 1 and 3 at once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_fsync_floor_reports_each_process_and_cleans_up(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "bench.fsync_floor", "--dir", str(tmp_path)),
            *("--rounds", "20", "--periods-us", "0,500"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert re.findall(r"^  (.*):$", output, re.M) == [
        "back to back",
        "one round every 500 µs",
    ], output
    rows = re.findall(r"(\d) at once, (\d) frames: p50 ([\d., ]+) ms \(mean ([\d., ]+)\)", output)
    assert [(row[0], row[1]) for row in rows] == 2 * [
        (processes, frames) for processes in "13" for frames in "124"
    ], output
    for processes, _, *shown in rows:
        for figures in shown:
            values = [float(value) for value in figures.split(", ")]
            assert len(values) == int(processes) and all(value > 0 for value in values)
    assert list(tmp_path.iterdir()) == []  # its files and directory are gone


def test_fsync_floor_refuses_a_bad_period() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.fsync_floor", "--periods-us", "0,fast"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "not a list of whole µs: '0,fast'" in completed.stderr
