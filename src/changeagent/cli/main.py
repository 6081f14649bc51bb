"""The `changeagent` command.

Both ChangeAgent's single-dash flags (`changeagent -p 9000 -d ./data`) and
long options (`changeagent serve --port 9000 --data-dir ./data`) start a node.
Bad or inconsistent flags exit with status 2 and a one-line reason.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TypeVar

from changeagent import __version__
from changeagent.config import ConfigError
from changeagent.node.node import NodeLimits
from changeagent.server import TAIL_CACHE_BYTES_DEFAULT, ServerOptions, serve
from changeagent.storage import CorruptionError, StorageError

N = TypeVar("N", int, float)
DEFAULT_LIMITS = NodeLimits()

DESCRIPTION = """\
Run a changeagent node: a durable, ordered change log served over HTTP.
With no options it serves on port 8080 and stores its data in ./data."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="changeagent",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-p",
        "--port",
        type=int,
        default=8080,
        help="HTTP port to listen on (default 8080; 0 picks a free port)",
    )
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0, every interface)"
    )
    parser.add_argument(
        "-d",
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="directory for the node's data (default ./data; created 0700)",
    )
    parser.add_argument(
        "-f",
        "--config-file",
        type=Path,
        default=None,
        help="YAML settings file; written with defaults if missing",
    )
    parser.add_argument(
        "-P",
        "--prefix",
        default="",
        help="serve every API path under this URI prefix, e.g. /changeagent",
    )
    parser.add_argument(
        "-v",
        "--verbosity",
        type=int,
        default=0,
        help="log detail: 0 informational (default), 1 or more debug",
    )
    parser.add_argument(
        "-logtostderr",
        "--log-to-stderr",
        action="store_true",
        help="accepted for ChangeAgent compatibility; logs always go to stderr",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_LIMITS.body_bytes_max,
        help="largest accepted request body (default 1 MiB)",
    )
    parser.add_argument(
        "--max-limit",
        type=int,
        default=DEFAULT_LIMITS.limit_max,
        help="largest `limit` a GET /changes may ask for (default 10000)",
    )
    parser.add_argument(
        "--max-block",
        type=float,
        default=DEFAULT_LIMITS.block_max_s,
        help="longest `block` (seconds) a long-poll may ask for (default 600)",
    )
    parser.add_argument(
        "--commit-timeout",
        type=float,
        default=DEFAULT_LIMITS.commit_timeout_s,
        help="seconds a write waits to commit before 503 (default 30)",
    )
    parser.add_argument(
        "--purge-interval",
        type=float,
        default=DEFAULT_LIMITS.purge_interval_s,
        help="seconds between checks of the purge rule (default 1)",
    )
    parser.add_argument(
        "--tail-cache-bytes",
        type=int,
        default=TAIL_CACHE_BYTES_DEFAULT,
        help="memory for the most recent changes (default 16 MiB)",
    )
    parser.add_argument("--version", action="version", version=f"changeagent {__version__}")
    return parser


def options_from_arguments(arguments: argparse.Namespace) -> ServerOptions:
    """Check flags for consistency; raise ConfigError naming the first problem."""
    if not 0 <= arguments.port <= 65535:
        raise ConfigError(f"-p: port {arguments.port} is not between 0 and 65535")
    prefix = arguments.prefix
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigError("-P: the prefix must start with '/' and must not end with '/'")
    limits = NodeLimits(
        body_bytes_max=_positive("--max-body-bytes", arguments.max_body_bytes),
        limit_max=_positive("--max-limit", arguments.max_limit),
        limit_default=min(DEFAULT_LIMITS.limit_default, arguments.max_limit),
        block_max_s=_positive("--max-block", arguments.max_block),
        commit_timeout_s=_positive("--commit-timeout", arguments.commit_timeout),
        purge_interval_s=_positive("--purge-interval", arguments.purge_interval),
    )
    return ServerOptions(
        data_dir=arguments.data_dir,
        port=arguments.port,
        host=arguments.host,
        settings_path=arguments.config_file,
        prefix=prefix,
        limits=limits,
        tail_cache_bytes=_positive("--tail-cache-bytes", arguments.tail_cache_bytes),
    )


def _positive(flag: str, value: N) -> N:
    if value <= 0:
        raise ConfigError(f"{flag} must be greater than 0")
    return value


def configure_logging(verbosity: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbosity > 0 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        options = options_from_arguments(arguments)
    except ConfigError as error:
        parser.exit(2, f"changeagent: {error}\n")
    configure_logging(arguments.verbosity)
    _install_uvloop()
    try:
        asyncio.run(serve(options))
    except CorruptionError as error:
        print(
            f"changeagent: refusing to serve corrupted data in {options.data_dir}: {error}; "
            "restore this node's data from a backup or a peer",
            file=sys.stderr,
        )
        return 1
    except StorageError as error:
        print(
            f"changeagent: storage in {options.data_dir} cannot be used: {error}", file=sys.stderr
        )
        return 1
    except ConfigError as error:
        print(f"changeagent: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"changeagent: {error}", file=sys.stderr)
        return 1
    return 0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # optional: the standard loop works, just slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":
    sys.exit(main())
