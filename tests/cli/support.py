"""Running the `changeagent` client commands as real processes."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

COMMAND_TIMEOUT_S = 60.0


def cli_environment(servers: str | None = None, **extra: str) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("CHANGEAGENT_")
    }
    if servers is not None:
        environment["CHANGEAGENT_SERVERS"] = servers
    environment.update(extra)
    return environment


def run_cli(
    *arguments: str,
    servers: str | None = None,
    stdin: str | None = None,
    environment: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`changeagent ARGUMENTS...` to completion; stdin is closed unless given."""
    return subprocess.run(
        [sys.executable, "-m", "changeagent", *arguments],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=environment if environment is not None else cli_environment(servers),
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line on stderr, and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@dataclass
class RunningCli:
    """A long-running command (tail -f, mirror): its stdout lines arrive in a queue."""

    arguments: list[str]
    environment: dict[str, str]
    process: subprocess.Popen[str] | None = None
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None

    def start(self) -> RunningCli:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "changeagent", *self.arguments],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.environment,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def take(self, count: int, timeout_s: float = 30.0) -> list[str]:
        """The next `count` lines, waiting at most `timeout_s` in all."""
        deadline = time.monotonic() + timeout_s
        taken = []
        while len(taken) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(taken)} of {count} lines within {timeout_s} s")
            try:
                taken.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue
        return taken

    def signal(self, number: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Send a signal and wait for the exit status; the rest of stdout is drained."""
        assert self.process is not None
        self.process.send_signal(number)
        status = self.process.wait(timeout_s)
        if self._reader is not None:
            self._reader.join(timeout_s)
        return status

    def stop(self) -> None:
        """Teardown: kill by pid if still running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def rest(self) -> list[str]:
        lines = []
        while not self.lines.empty():
            lines.append(self.lines.get_nowait())
        return lines

    def stderr(self) -> str:
        assert self.process is not None and self.process.stderr is not None
        return self.process.stderr.read()


def checkpoint_id(path: Path) -> int:
    return int(path.read_text().strip())
