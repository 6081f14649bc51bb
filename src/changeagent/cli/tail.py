"""`changeagent tail`: print changes in id order, one JSON per line; with -f follow
forever across failover, and exit 0 on SIGINT or SIGTERM.

A batch is printed, flushed and checkpointed under a lock that a stop waits for, so
an interrupted tail has printed whole lines only, and its checkpoint names the last
change printed: a restart with the same checkpoint neither repeats nor skips a line.

The following runs on a thread of its own and the main thread takes the signals with
`sigtimedwait` (`run_until_stopped`). A Python signal handler runs in the main
thread between two bytecodes, so one raising an exception there (as this command
once did) missed a signal that arrived just before the thread blocked in a socket's
`poll()`: the tail exited only when its 30 s long poll did (CI saw it once).
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable

from changeagent.cli.output import Output, change_document
from changeagent.client import Client
from changeagent.client.core import read_checkpoint, write_checkpoint

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
SIGNAL_POLL_S = 0.1  # how often the main thread looks whether the work has ended


def start_position(client: Client, arguments: argparse.Namespace) -> int:
    """The checkpoint's position if it has one, else --since, or the log's end."""
    if arguments.checkpoint is not None:
        saved = read_checkpoint(str(arguments.checkpoint))
        if saved:
            return saved
    if arguments.from_end:
        return client.last_index()
    since: int = arguments.since
    return since


def run_until_stopped(work: Callable[[], None], section: threading.Lock) -> bool:
    """Run `work()` on a daemon thread until it returns (False) or SIGINT or SIGTERM
    arrives (True). Then `section` is held: the part of the work under it finished
    and no other starts; the rest of the work (a request in flight) is abandoned, and
    the signals stay blocked while the process exits. An exception of `work` is
    raised here."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # raised again on the main thread
            failures.append(error)

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    worker = threading.Thread(target=run, name="changeagent-work", daemon=True)
    worker.start()  # it inherits the mask: the signals wait for `sigtimedwait` below
    while worker.is_alive():
        if signal.sigtimedwait(STOP_SIGNALS, SIGNAL_POLL_S) is not None:
            section.acquire()
            return True
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    if failures:
        raise failures[0]
    return False


def tail(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    checkpoint = None if arguments.checkpoint is None else str(arguments.checkpoint)
    printing = threading.Lock()

    def follow() -> None:
        batches = client.follow_pages(
            start_position(client, arguments),
            tags=arguments.tag,
            type=arguments.type,
            skip_missed=arguments.skip_missed,
            stop_at_end=not arguments.follow,
        )
        for batch in batches:
            with printing:
                for change in batch:
                    output.document(change_document(change))
                output.flush()
                if checkpoint is not None:
                    write_checkpoint(checkpoint, batch[-1].id)

    if run_until_stopped(follow, printing):
        output.flush()
    return 0
