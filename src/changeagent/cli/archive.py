"""`changeagent archive ls DIR` and `changeagent archive cat DIR [--since N] [--tag T]
[--type N]`: read an archive of purged history (`changeagent.archive`) back, also
while a node writes it, and from a copy fetched from object storage.

`ls` prints one line per segment (file, first and last `_id`, count, bytes, closed
or open), then a total; `--verify` reads every segment and checks it against its
record; `--json` prints the records as JSON lines instead. `cat` prints the
changes in `_id` order, one compact JSON per line, as `changeagent tail` does.

Exit status: 0; 1 when the archive cannot be read (a missing or damaged segment:
one line on stderr, after the lines already printed); 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from changeagent.archive import ArchiveError, read_changes, read_listing, verify_segment
from changeagent.archive.format import Segment
from changeagent.cli.output import change_document
from changeagent.client.model import Change


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="changeagent archive",
        description="Read an archive of purged changes (the archiveDir setting).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("ls", help="list the segments")
    listing.add_argument("directory", type=Path, metavar="DIR")
    listing.add_argument("--verify", action="store_true", help="read and check every segment")
    listing.add_argument("--json", action="store_true", help="the segments' records as JSON")
    listing.set_defaults(handler=_ls)
    cat = commands.add_parser("cat", help="print the changes, one JSON per line")
    cat.add_argument("directory", type=Path, metavar="DIR")
    cat.add_argument("--since", type=int, default=0, help="after this id (default 0)")
    cat.add_argument(
        "--tag", action="append", default=[], help="only changes with this tag (repeatable, ORed)"
    )
    cat.add_argument("--type", type=int, default=None, help="only changes of this type")
    cat.set_defaults(handler=_cat)
    return parser


def main(argv: Sequence[str]) -> int:
    arguments = build_parser().parse_args(list(argv))
    try:
        status: int = arguments.handler(arguments)
    except ArchiveError as error:
        sys.stdout.flush()
        print(f"changeagent archive {arguments.command}: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `| head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status


def _ls(arguments: argparse.Namespace) -> int:
    directory: Path = arguments.directory
    listing = read_listing(directory)
    out = sys.stdout
    if not arguments.json:
        out.write(f"{'FILE':<58} {'FIRST':>12} {'LAST':>12} {'COUNT':>9} {'BYTES':>11} STATE\n")
    changes = 0
    for segment in listing.segments:
        if arguments.verify:
            verify_segment(directory, segment)
        changes += segment.count
        if arguments.json:
            out.write(segment.to_json().decode() + "\n")
        else:
            out.write(_row(segment, segment is listing.open))
    if not arguments.json:
        checked = ", every segment verified" if arguments.verify else ""
        segments = listing.segments
        span = f", _id {segments[0].first} to {segments[-1].last}" if segments else ""
        out.write(f"{len(segments)} segments, {changes} changes{span}{checked}\n")
    return 0


def _row(segment: Segment, is_open: bool) -> str:
    state = "open" if is_open else "closed"
    return (
        f"{segment.file:<58} {segment.first:>12} {segment.last:>12} {segment.count:>9} "
        f"{segment.size_bytes:>11} {state}\n"
    )


def _cat(arguments: argparse.Namespace) -> int:
    out = sys.stdout
    for document in read_changes(
        arguments.directory, arguments.since, arguments.tag, arguments.type
    ):
        line = orjson.dumps(change_document(Change.from_json(document)))
        out.write(line.decode() + "\n")
    return 0
