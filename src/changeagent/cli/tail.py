"""`changeagent tail`: print changes in id order, one JSON per line; with -f follow
forever across failover, and exit 0 on SIGINT or SIGTERM.

A batch is printed, flushed and checkpointed with SIGINT and SIGTERM held back, and
the signals arrive only while waiting for the next batch. So an interrupted tail has
printed whole lines only, and its checkpoint names the last change printed: a
restart with the same checkpoint neither repeats nor skips a line.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from changeagent.cli.output import Output, change_document
from changeagent.client import Client
from changeagent.client.core import read_checkpoint, write_checkpoint

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop after what was printed (BaseException, so no
    handler of ordinary errors swallows it)."""


def _raise_interrupted(number: int, frame: FrameType | None) -> None:
    raise Interrupted(number)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted inside this block."""
    previous = {number: signal.signal(number, _raise_interrupted) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until this block ends (then they are delivered)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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


def tail(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    checkpoint = None if arguments.checkpoint is None else str(arguments.checkpoint)
    with stop_signals_raise():
        try:
            batches = client.follow_pages(
                start_position(client, arguments),
                tags=arguments.tag,
                type=arguments.type,
                skip_missed=arguments.skip_missed,
                stop_at_end=not arguments.follow,
            )
            for batch in batches:
                with stop_signals_held():
                    for change in batch:
                        output.document(change_document(change))
                    output.flush()
                    if checkpoint is not None:
                        write_checkpoint(checkpoint, batch[-1].id)
        except Interrupted:
            output.flush()
    return 0
