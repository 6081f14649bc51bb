"""`changeagent [serve]`: run a node.

Both ChangeAgent's single-dash flags (`changeagent -p 9000 -d ./data`) and
long options (`changeagent serve --port 9000 --data-dir ./data`) start a node.
Bad or inconsistent flags exit with status 2 and a one-line reason.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TypeVar

from changeagent.api.caching import PAGE_CACHE_MAX_AGE_S_DEFAULT
from changeagent.api.streams import (
    MAX_AGE_S_DEFAULT,
    MAX_STREAMS_DEFAULT,
    SEND_TIMEOUT_S_DEFAULT,
)
from changeagent.config import ConfigError
from changeagent.logs import LOG_FORMATS, configure_logging
from changeagent.node.node import NodeLimits
from changeagent.security.tls_files import ApiTls, ClusterTls
from changeagent.server import ServerOptions, serve
from changeagent.storage import TAIL_CACHE_BYTES_DEFAULT, CorruptionError, StorageError
from changeagent.version import package_version

N = TypeVar("N", int, float)
DEFAULT_LIMITS = NodeLimits()

USAGE = "%(prog)s [serve] [options]\n       %(prog)s COMMAND [options]   (COMMAND --help for each)"
DESCRIPTION = """\
Run a changeagent node: a durable, ordered change log served over HTTP.
With no options it serves on port 8080 and stores its data in ./data.
ChangeAgent's single-dash flags and long options start it alike, with or
without the word `serve`; these two are the same:
  changeagent -p 9000 -d ./data
  changeagent serve --port 9000 --data-dir ./data

Client commands (talk to a running cluster; --server URL, default
$CHANGEAGENT_SERVERS or http://localhost:8080):
  post JSON          store a change          get ID       print one change
  changes            print a page            tail [-f]    print (and follow) changes
  mirror --to FILE   keep a local SQLite copy of the log
  cluster [status|add ADDRESS|remove ID]     config [get|set FILE]
  health [up|down]   backup --out FILE  save a consistent copy of a node's log

Local tools (no server):
  restore --from FILE -d DIR   make a standalone node of a backup
  archive ls|cat DIR           read an archive of purged history"""
PORT_DEFAULT = 8080

SECURITY_EPILOG = """\
examples:
  changeagent -p 9000 -d ./data -pw passwd   users from `htpasswd -cB passwd NAME`
  changeagent -sp 8443 -cert c.pem -key k.pem              HTTPS only (TLS 1.2+)
  changeagent -p 8080 -sp 8443 -cert c.pem -key k.pem      HTTP and HTTPS, same API
  changeagent -sp 8443 -cert c.pem -key k.pem -cas cas.pem client certificates required
  changeagent -p 8000 -cp 9443 -ccert n.pem -ckey n.key -cca ca.pem
                                             mutual TLS between members on the cluster port"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="changeagent",
        usage=USAGE,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SECURITY_EPILOG,
    )
    parser.add_argument(
        "-p",
        "--port",
        type=int,
        default=None,
        help="HTTP port to listen on (default 8080 unless -sp is given; 0 picks a free port)",
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
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line, with the node and "
        "cluster ids and each record's fields",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every HTTP request (method, route, status, duration, bytes, user) "
        "on the logger changeagent.access; plain writes then take aiohttp's slower "
        "path (the front door is off)",
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
        "--seed-entries",
        type=int,
        default=DEFAULT_LIMITS.seed_entries_min,
        metavar="N",
        help="a node joining a cluster whose leader holds at least N log entries first "
        "receives them as a database file instead of one APPEND at a time; 0 never "
        "(default 10000)",
    )
    parser.add_argument(
        "--purge-interval",
        type=float,
        default=DEFAULT_LIMITS.purge_interval_s,
        help="seconds between checks of the purge rule (default 1)",
    )
    parser.add_argument(
        "--max-purge-entries",
        type=int,
        default=DEFAULT_LIMITS.purge_entries_max,
        metavar="N",
        help="most log entries one purge removes; a larger backlog is purged in steps, "
        "one per purge check, since every write of the node waits while it is removed "
        "(default 100000)",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=MAX_STREAMS_DEFAULT,
        help="most feed streams (GET /changes?feed=...) open at once; 503 beyond (default 10000)",
    )
    parser.add_argument(
        "--stream-send-timeout",
        type=float,
        default=SEND_TIMEOUT_S_DEFAULT,
        metavar="S",
        help="a stream whose consumer takes no data for this long is dropped (default 30)",
    )
    parser.add_argument(
        "--stream-max-age",
        type=float,
        default=MAX_AGE_S_DEFAULT,
        metavar="S",
        help="a stream ends cleanly after this long; its consumer reconnects and resumes "
        "(default 3600)",
    )
    parser.add_argument(
        "--page-cache-max-age",
        type=int,
        default=PAGE_CACHE_MAX_AGE_S_DEFAULT,
        metavar="S",
        help="max-age (seconds) HTTP caches may keep a full page of changes "
        "(default 86400; pages never change once full)",
    )
    parser.add_argument(
        "--tail-cache-bytes",
        type=int,
        default=TAIL_CACHE_BYTES_DEFAULT,
        help="memory for the most recent changes (default 16 MiB)",
    )
    _add_security_arguments(parser)
    _add_cluster_arguments(parser)
    parser.add_argument("--version", action="version", version=f"changeagent {package_version()}")
    return parser


def _add_security_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security")
    group.add_argument(
        "-pw", "--password-file", type=Path, default=None,
        help="htpasswd file (htpasswd -B); every request then needs HTTP Basic credentials",
    )  # fmt: skip
    group.add_argument(
        "-sp", "--secure-port", type=int, default=None,
        help="HTTPS port (needs -cert and -key; 0 picks a free port)",
    )  # fmt: skip
    group.add_argument(
        "-cert", "--tls-cert", type=Path, default=None,
        help="PEM certificate (chain) for the HTTPS port",
    )  # fmt: skip
    group.add_argument(
        "-key", "--tls-key", type=Path, default=None, help="PEM private key of -cert"
    )  # fmt: skip
    group.add_argument(
        "--public-reads", action="store_true",
        help="with -pw: reading changes needs no credentials (writes and the rest still do), "
        "so shared HTTP caches may keep pages",
    )  # fmt: skip
    group.add_argument(
        "-cas", "--tls-client-cas", type=Path, default=None,
        help="PEM CA certificates; HTTPS clients must present a certificate signed by one",
    )  # fmt: skip


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "-cp", "--cluster-port", type=int, default=None,
        help="port for traffic between cluster members (default: the API port)",
    )  # fmt: skip
    group.add_argument(
        "-ccert", "--cluster-cert", type=Path, default=None,
        help="PEM certificate of this member for mutual TLS on -cp",
    )  # fmt: skip
    group.add_argument(
        "-ckey", "--cluster-key", type=Path, default=None, help="PEM private key of -ccert"
    )  # fmt: skip
    group.add_argument(
        "-cca", "--cluster-ca", type=Path, default=None,
        help="PEM CA certificate(s) that sign every member's certificate",
    )  # fmt: skip


def options_from_arguments(arguments: argparse.Namespace) -> ServerOptions:
    """Check flags for consistency; raise ConfigError naming the first problem."""
    port, secure_port = _api_ports(arguments)
    cluster_port, cluster_tls = _cluster_options(arguments, (port, secure_port))
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
        purge_entries_max=_positive("--max-purge-entries", arguments.max_purge_entries),
        seed_entries_min=_not_negative("--seed-entries", arguments.seed_entries),
    )
    return ServerOptions(
        data_dir=arguments.data_dir,
        port=port,
        host=arguments.host,
        settings_path=arguments.config_file,
        prefix=prefix,
        limits=limits,
        tail_cache_bytes=_positive("--tail-cache-bytes", arguments.tail_cache_bytes),
        password_file=arguments.password_file,
        secure_port=secure_port,
        api_tls=_api_tls(arguments),
        cluster_port=cluster_port,
        cluster_tls=cluster_tls,
        page_cache_max_age_s=_not_negative("--page-cache-max-age", arguments.page_cache_max_age),
        public_reads=_public_reads(arguments),
        streams_max=_positive("--max-streams", arguments.max_streams),
        stream_send_timeout_s=_positive("--stream-send-timeout", arguments.stream_send_timeout),
        stream_max_age_s=_positive("--stream-max-age", arguments.stream_max_age),
        access_log=arguments.access_log,
    )


def _api_ports(arguments: argparse.Namespace) -> tuple[int | None, int | None]:
    """(-p, -sp). As in ChangeAgent, -sp alone serves HTTPS only; -p too serves both."""
    port = _port("-p", arguments.port)
    secure_port = _port("-sp", arguments.secure_port)
    if port is None and secure_port is None:
        port = PORT_DEFAULT
    if port and port == secure_port:
        raise ConfigError("-p and -sp must be different ports")
    return port, secure_port


def _api_tls(arguments: argparse.Namespace) -> ApiTls | None:
    cert, key, client_cas = arguments.tls_cert, arguments.tls_key, arguments.tls_client_cas
    if (cert is None) != (key is None):
        raise ConfigError("-cert and -key must be given together")
    if arguments.secure_port is None:
        if cert is not None or client_cas is not None:
            raise ConfigError("-cert, -key and -cas need -sp (the HTTPS port)")
        return None
    if cert is None:
        raise ConfigError("-sp needs -cert and -key")
    return ApiTls(cert, key, client_cas)


def _cluster_options(
    arguments: argparse.Namespace, api_ports: tuple[int | None, int | None]
) -> tuple[int | None, ClusterTls | None]:
    """(-cp, -ccert/-ckey/-cca): the three TLS files all together, and only with -cp."""
    cluster_port = _port("-cp", arguments.cluster_port)
    if cluster_port and cluster_port in api_ports:
        raise ConfigError("-cp must differ from -p and -sp")
    files = (arguments.cluster_cert, arguments.cluster_key, arguments.cluster_ca)
    given = sum(path is not None for path in files)
    if given == 0:
        return cluster_port, None
    if given < len(files):
        raise ConfigError("-ccert, -ckey and -cca must be given together")
    if cluster_port is None:
        raise ConfigError("-ccert, -ckey and -cca need -cp (the cluster port)")
    return cluster_port, ClusterTls(*files)


def _public_reads(arguments: argparse.Namespace) -> bool:
    if arguments.public_reads and arguments.password_file is None:
        raise ConfigError("--public-reads needs -pw (without it every read is public)")
    return bool(arguments.public_reads)


def _not_negative(flag: str, value: int) -> int:
    if value < 0:
        raise ConfigError(f"{flag} must not be negative")
    return value


def _port(flag: str, value: int | None) -> int | None:
    if value is not None and not 0 <= value <= 65535:
        raise ConfigError(f"{flag}: port {value} is not between 0 and 65535")
    return value


def _positive(flag: str, value: N) -> N:
    if value <= 0:
        raise ConfigError(f"{flag} must be greater than 0")
    return value


def serve_main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        options = options_from_arguments(arguments)
    except ConfigError as error:
        parser.exit(2, f"changeagent: {error}\n")
    configure_logging(arguments.verbosity, arguments.log_format)
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
