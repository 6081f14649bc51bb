"""`changeagent tail`: print changes in id order, one JSON per line; with -f follow
forever across failover, and exit 0 on SIGINT or SIGTERM.

A batch is printed, flushed and checkpointed under a lock that a stop waits for
(`cli.stopping.run_until_stopped`), so an interrupted tail has printed whole lines
only, and its checkpoint names the last change printed: a restart with the same
checkpoint neither repeats nor skips a line.
"""

from __future__ import annotations

import argparse
import threading

from changeagent.cli.output import Output, change_document
from changeagent.cli.stopping import run_until_stopped
from changeagent.client import Client
from changeagent.client.core import read_checkpoint, write_checkpoint


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
