"""`changeagent mirror`: a first copy with --once, following with the process killed
(-9) and restarted, SIGTERM, a progress line on a terminal, one-line refusals."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

from changeagent.client import Client
from tests.cli.support import RunningCli, cli_environment, one_error_line, run_cli
from tests.support.server import wait_until


def mirrored_ids(path: Path) -> list[int]:
    """The ids in the mirror, read by another connection while it may be writing."""
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as reader:
        tables = {row[0] for row in reader.execute("SELECT name FROM sqlite_master")}
        if "changes" not in tables:
            return []
        return [row[0] for row in reader.execute("SELECT id FROM changes ORDER BY id")]


def test_once_copies_the_filtered_log_and_the_latest_view(url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    with Client(url) as client:
        posted = [client.post({"name": f"k{n % 2}", "n": n}, tags=[tag]) for n in range(5)]
        client.post({"name": "k0"}, tags=["unrelated"])
    path = tmp_path / "copy.sqlite"
    result = run_cli("mirror", "--to", str(path), "--tag", tag, "--key", "data.name", "--once",
                     servers=url)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert mirrored_ids(path) == [change.id for change in posted]
    with sqlite3.connect(path) as reader:
        latest = dict(reader.execute("SELECT key, id FROM latest"))
    assert latest == {"k0": posted[4].id, "k1": posted[3].id}
    other = run_cli("mirror", "--to", str(path), "--once", servers=url)
    assert other.returncode == 2 and "another filter" in one_error_line(other)


def test_follow_survives_kill_9_and_stops_on_sigterm(url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "follow.sqlite"
    arguments = ["mirror", "--to", str(path), "--tag", tag]
    with Client(url) as client:
        posted = [client.post(n, tags=[tag]) for n in range(20)]
        first = RunningCli(arguments, cli_environment(url)).start()
        try:
            wait_until(lambda: mirrored_ids(path) == [c.id for c in posted], 30, 0.05)
            posted += [client.post(n, tags=[tag]) for n in range(20, 40)]
            wait_until(lambda: len(mirrored_ids(path)) >= 25, 30, 0.01)
            assert first.process is not None
            first.process.kill()  # kill -9, perhaps in the middle of a page
            first.process.wait(30)
        finally:
            first.stop()
        partial = mirrored_ids(path)
        assert partial == [c.id for c in posted[: len(partial)]]  # a prefix, no hole
        posted += [client.post(n, tags=[tag]) for n in range(40, 50)]
        second = RunningCli(arguments, cli_environment(url)).start()
        try:
            wait_until(lambda: mirrored_ids(path) == [c.id for c in posted], 30, 0.05)
            assert second.signal(signal.SIGTERM) == 0
            assert second.stderr() == ""
        finally:
            second.stop()


def test_a_terminal_sees_a_progress_line(url: str, tmp_path: Path) -> None:
    with Client(url) as client:
        client.post("something to copy")
    primary, secondary = os.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "changeagent", "mirror", "--once",
             "--to", str(tmp_path / "tty.sqlite")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary,
            env=cli_environment(url), timeout=60,
        )  # fmt: skip
        os.close(secondary)
        secondary = -1
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert result.returncode == 0
    assert b"synced" in shown and b"changes, at id" in shown and b"/s" in shown
