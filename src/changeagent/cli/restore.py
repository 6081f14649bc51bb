"""`changeagent restore --from FILE -d DIR`: make a standalone node from a backup
(`changeagent backup`, GET /backup). See `changeagent.node.restore`.

Exit status: 0 restored; 1 the file is not a usable backup (one line says why:
truncated, corrupted, not a backup), DIR is not empty, or a disk error; 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from changeagent.backup_format import BackupError
from changeagent.ids import format_id
from changeagent.node.restore import RestoreRefused, restore
from changeagent.storage import StorageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="changeagent restore",
        description="Make a new standalone node in DIR from a backup file: the same "
        "changes with the same _ids, a new node id and no cluster. Start it with "
        "`changeagent -d DIR`; it can then found a new cluster.",
    )
    parser.add_argument(
        "--from", dest="source", type=Path, required=True, metavar="FILE",
        help="the backup file (changeagent backup --out FILE)",
    )  # fmt: skip
    parser.add_argument(
        "-d", "--data-dir", type=Path, required=True, metavar="DIR",
        help="the new node's data directory: must not exist, or be empty",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str]) -> int:
    arguments = build_parser().parse_args(list(argv))
    source: Path = arguments.source
    data_dir: Path = arguments.data_dir
    try:
        restored = restore(source, data_dir)
    except BackupError as error:
        return _fail(f"{source} is not a usable backup: {error}")
    except RestoreRefused as error:
        return _fail(str(error))
    except (OSError, StorageError) as error:
        return _fail(f"{type(error).__name__}: {error}")
    header = restored.header
    print(
        f"restored {header.changes} changes (_id {header.first_change_id} to "
        f"{header.last_change_id}) from node {header.node_id} into {data_dir} as standalone "
        f"node {format_id(restored.node_id)}; start it with: changeagent -d {data_dir}"
    )
    return 0


def _fail(message: str) -> int:
    print(f"changeagent restore: {message}", file=sys.stderr)
    return 1
