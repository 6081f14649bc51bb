"""`changeagent mirror`: keep a local SQLite copy of the log (changeagent.client.mirror).

SIGINT and SIGTERM stop it at once, after the page being written (each is one SQLite
transaction): an interrupted mirror (like a killed one) holds a consistent prefix and
resumes after it. The sync runs on a thread of its own and the signals are taken on
the main thread (`cli.stopping`, which says why). On a terminal, a
progress line shows the changes synced against the known end of the log and the rate.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from changeagent.cli.output import UsageError
from changeagent.cli.stopping import run_until_stopped
from changeagent.client import Client
from changeagent.client.mirror import Mirror, MirrorProgress

PROGRESS_INTERVAL_S = 0.2


@dataclass
class ProgressLine:
    """One line on a terminal, redrawn at most every PROGRESS_INTERVAL_S."""

    stream: TextIO
    drawn_at_s: float = field(default=0.0)
    drawn: bool = False

    def __call__(self, progress: MirrorProgress) -> None:
        now = time.monotonic()
        if now - self.drawn_at_s < PROGRESS_INTERVAL_S:
            return
        self.drawn_at_s = now
        self.stream.write("\r" + describe(progress) + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def describe(progress: MirrorProgress) -> str:
    """`synced 12,000 changes, at id 12,000 of ~50,000 (24%), 48,000/s`."""
    text = f"synced {progress.synced:,} changes, at id {progress.last_id:,}"
    end = progress.end_id
    if end:
        share = min(100, progress.last_id * 100 // end)
        text += f" of ~{end:,} ({share}%)"
    return text + f", {progress.rate_per_s:,.0f}/s"


def mirror(client: Client, arguments: argparse.Namespace) -> int:
    line = ProgressLine(sys.stderr) if sys.stderr.isatty() else None
    try:
        copy = Mirror(
            client,
            arguments.to,
            tags=arguments.tag,
            type=arguments.type,
            key_path=arguments.key_path,
            skip_missed=arguments.skip_missed,
        )
    except ValueError as error:  # not a mirror, another filter, a bad --key
        raise UsageError(str(error)) from error
    section = threading.Lock()  # held while the file is read or written

    def work() -> None:
        copy.sync(once=arguments.once, progress=line, section=section)

    with copy:
        try:
            run_until_stopped(work, section)  # stopped: the page in flight was written
        except sqlite3.Error as error:  # the disk is full, the file was removed...
            print(f"changeagent mirror: {arguments.to}: {error}", file=sys.stderr)
            return 1
        finally:
            if line is not None:
                line.end()
    return 0
