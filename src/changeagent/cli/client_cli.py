"""The client subcommands of `changeagent`: post, get, changes, tail, mirror,
cluster, config, health and backup, over `changeagent.client`.

Errors are one line on stderr and an exit status: 2 for usage (bad flags, a
malformed JSON argument, a missing password), 1 for a server or connection error.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from changeagent.cli.output import Output, UsageError, change_document, page_document
from changeagent.client import ChangeAgentError, ChangesMissed, Client, ServerError

SERVERS_ENVIRONMENT = "CHANGEAGENT_SERVERS"
PASSWORD_ENVIRONMENT = "CHANGEAGENT_PASSWORD"
SERVER_DEFAULT = "http://localhost:8080"

Handler = Callable[[Client, argparse.Namespace, Output], int]


def _connection_parser() -> argparse.ArgumentParser:
    """The options every client subcommand takes."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--server", action="append", default=None, metavar="URL",
        help=f"a member's URL, repeatable (default ${SERVERS_ENVIRONMENT}, comma-separated, "
        f"else {SERVER_DEFAULT})",
    )  # fmt: skip
    group.add_argument(
        "--user", default=None,
        help=f"HTTP Basic user; the password comes from ${PASSWORD_ENVIRONMENT} or a prompt",
    )  # fmt: skip
    group.add_argument("--cacert", type=Path, default=None, help="CA (PEM) to verify HTTPS servers")
    group.add_argument("--cert", type=Path, default=None, help="client certificate (PEM)")
    # Not --key: post and mirror use --key for the idempotency key and the JSON path.
    group.add_argument(
        "--cert-key", type=Path, default=None, metavar="FILE", help="private key of --cert (PEM)"
    )
    group.add_argument(
        "--timeout", type=float, default=40.0,
        help="seconds per request (default 40; keep above the server's --commit-timeout)",
    )  # fmt: skip
    group.add_argument("--pretty", action="store_true", help="indented JSON for people")
    return parent


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tag", action="append", default=[], help="only changes with this tag (repeatable, ORed)"
    )
    parser.add_argument("--type", type=int, default=None, help="only changes of this type")


def build_client_parser() -> argparse.ArgumentParser:
    connection = _connection_parser()
    parser = argparse.ArgumentParser(
        prog="changeagent",
        description="Talk to a changeagent cluster. `changeagent serve --help` runs a node.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    post = commands.add_parser(
        "post", parents=[connection], help="store one change; prints it as stored"
    )
    post.add_argument("json", metavar="JSON", help="the change's data as JSON text, or - for stdin")
    post.add_argument("--tag", action="append", default=None, help="a tag (repeatable)")
    post.add_argument("--type", type=int, default=0, help="the change's type (default 0)")
    post.add_argument(
        "--key", "--idempotency-key", dest="idempotency_key", default=None, metavar="KEY",
        help="makes repeating this post store it once (default: a new key, kept across retries)",
    )  # fmt: skip
    post.set_defaults(handler=_post)

    get = commands.add_parser("get", parents=[connection], help="print one change by id")
    get.add_argument("id", type=int)
    get.set_defaults(handler=_get)

    changes = commands.add_parser(
        "changes", parents=[connection], help="print one page of changes (the server's document)"
    )
    changes.add_argument("--since", type=int, default=0, help="after this id (default 0)")
    changes.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    _filters(changes)
    changes.set_defaults(handler=_changes)

    _add_tail(commands, connection)
    _add_mirror(commands, connection)
    _add_admin(commands, connection)
    return parser


def _add_tail(commands: Any, connection: argparse.ArgumentParser) -> None:
    tail = commands.add_parser(
        "tail", parents=[connection],
        help="print changes in id order, one compact JSON per line; -f follows",
        description="Print the changes after a position, one JSON per line, to the end of "
        "the log; with -f, follow forever across failover (SIGINT/SIGTERM exit 0).",
    )  # fmt: skip
    tail.add_argument("-f", "--follow", action="store_true", help="keep following new changes")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--since", type=int, default=0, help="after this id (default 0)")
    start.add_argument(
        "--from-end", action="store_true", help="only changes stored from now on (with -f)"
    )
    _filters(tail)
    tail.add_argument(
        "--checkpoint", type=Path, default=None, metavar="FILE",
        help="resume after the id saved here; saved after each batch printed",
    )  # fmt: skip
    tail.add_argument(
        "--skip-missed", action="store_true",
        help="go on past changes purged before they were printed (default: exit 1)",
    )  # fmt: skip
    tail.set_defaults(handler=_tail)


def _add_mirror(commands: Any, connection: argparse.ArgumentParser) -> None:
    mirror = commands.add_parser(
        "mirror", parents=[connection],
        help="keep a local SQLite copy of the log (docs/MIRROR.md)",
    )  # fmt: skip
    mirror.add_argument("--to", type=Path, required=True, metavar="FILE", help="the SQLite file")
    _filters(mirror)
    mirror.add_argument(
        "--key", dest="key_path", default=None, metavar="PATH",
        help="also keep table `latest`: the newest change per value of this JSON path "
        "(e.g. data.name)",
    )  # fmt: skip
    mirror.add_argument("--once", action="store_true", help="stop when caught up")
    mirror.add_argument(
        "--skip-missed", action="store_true",
        help="go on past changes purged before they were mirrored (default: exit 1)",
    )  # fmt: skip
    mirror.set_defaults(handler=_mirror)


def _add_admin(commands: Any, connection: argparse.ArgumentParser) -> None:
    cluster = commands.add_parser(
        "cluster", parents=[connection], help="cluster status, add or remove a member"
    )
    cluster.add_argument("action", nargs="?", default="status", choices=("status", "add", "remove"))
    cluster.add_argument(
        "target", nargs="?", default=None, metavar="ADDRESS|ID",
        help="add: the new member's HOST:PORT; remove: the member's id",
    )  # fmt: skip
    cluster.set_defaults(handler=_cluster)

    config = commands.add_parser(
        "config", parents=[connection], help="print or replace the cluster's configuration"
    )
    config.add_argument("action", nargs="?", default="get", choices=("get", "set"))
    config.add_argument(
        "file", nargs="?", default=None, metavar="FILE", help="set: YAML file, or - for stdin"
    )
    config.set_defaults(handler=_config)

    health = commands.add_parser(
        "health", parents=[connection],
        help="each server's health (exit 1 if any is not ok); up/down marks one server",
    )  # fmt: skip
    health.add_argument("action", nargs="?", default=None, choices=("up", "down"))
    health.set_defaults(handler=_health)

    backup = commands.add_parser(
        "backup", parents=[connection],
        help="save a backup of one node's committed log (GET /backup) to a file",
        description="Save a backup of the --server node's committed log to FILE: written "
        "to a temporary file, its length and SHA-256 checked, fsynced, then renamed over "
        "FILE. `changeagent restore --from FILE -d DIR` makes a node of it.",
    )  # fmt: skip
    backup.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to save it")
    backup.set_defaults(handler=_backup)


def run_client(argv: Sequence[str]) -> int:
    parser = build_client_parser()
    arguments = parser.parse_args(list(argv))
    output = Output(sys.stdout, pretty=arguments.pretty)
    try:
        client = _client(arguments)
    except UsageError as error:
        parser.exit(2, f"changeagent {arguments.command}: {error}\n")
    with client:
        try:
            handler: Handler = arguments.handler
            return handler(client, arguments, output)
        except UsageError as error:
            parser.exit(2, f"changeagent {arguments.command}: {error}\n")
        except ChangesMissed as error:
            return _fail(
                arguments.command,
                f"{error}; resume with --since {(error.first_retained or 1) - 1} "
                "or pass --skip-missed",
            )
        except ServerError as error:
            return _fail(arguments.command, f"server answered {error.status}: {error.message}")
        except ChangeAgentError as error:
            return _fail(arguments.command, str(error))
        except BrokenPipeError:
            return _stdout_closed()


def _fail(command: str, message: str) -> int:
    print(f"changeagent {command}: {message}", file=sys.stderr)
    return 1


def _stdout_closed() -> int:
    """The reader went away (`| head`): stop quietly, as other Unix tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def _client(arguments: argparse.Namespace) -> Client:
    servers = _servers(arguments.server)
    auth = None
    if arguments.user is not None:
        auth = (arguments.user, _password(arguments.user))
    if (arguments.cert is None) != (arguments.cert_key is None):
        raise UsageError("--cert and --cert-key must be given together")
    try:
        return Client(
            servers,
            auth=auth,
            ca_file=_path_text(arguments.cacert),
            cert_file=_path_text(arguments.cert),
            key_file=_path_text(arguments.cert_key),
            timeout_s=arguments.timeout,
        )
    except (ValueError, OSError) as error:  # a bad URL, an unreadable certificate
        raise UsageError(str(error)) from error


def _servers(given: list[str] | None) -> list[str]:
    if given:
        return given
    from_environment = os.environ.get(SERVERS_ENVIRONMENT, "")
    servers = [item.strip() for item in from_environment.split(",") if item.strip()]
    return servers or [SERVER_DEFAULT]


def _password(user: str) -> str:
    password = os.environ.get(PASSWORD_ENVIRONMENT)
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise UsageError(f"--user needs ${PASSWORD_ENVIRONMENT} when there is no terminal")
    return getpass.getpass(f"password for {user}: ")


def _path_text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _read_argument(text: str) -> str:
    """A command-line argument, or stdin's whole text for `-`."""
    return sys.stdin.read() if text == "-" else text


def _json_argument(text: str) -> Any:
    try:
        return orjson.loads(_read_argument(text))
    except orjson.JSONDecodeError as error:
        raise UsageError(f"the change is not valid JSON: {error}") from error


# The subcommands ------------------------------------------------------------------


def _post(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    data = _json_argument(arguments.json)
    change = client.post(data, arguments.tag, arguments.type, arguments.idempotency_key)
    output.document(change_document(change))
    return 0


def _get(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    output.document(change_document(client.get(arguments.id)))
    return 0


def _changes(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    page = client.changes(arguments.since, arguments.limit, arguments.tag, arguments.type)
    output.document(page_document(page))
    return 0


def _tail(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    from changeagent.cli.tail import tail

    return tail(client, arguments, output)


def _mirror(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    from changeagent.cli.mirror import mirror

    return mirror(client, arguments)


def _cluster(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    action, target = arguments.action, arguments.target
    if action == "status":
        if target is not None:
            raise UsageError("cluster status takes no argument")
        output.document(client.cluster())
    elif target is None:
        raise UsageError(f"cluster {action} needs the member's {_TARGET[action]}")
    elif action == "add":
        output.document(client.add_member(target))
    else:
        output.document(client.remove_member(target))
    return 0


_TARGET = {"add": "address (HOST:PORT)", "remove": "id"}


def _config(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    if arguments.action == "get":
        if arguments.file is not None:
            raise UsageError("config get takes no argument")
        output.text(client.config())
        return 0
    if arguments.file is None:
        raise UsageError("config set needs a YAML file, or - for stdin")
    output.text(client.set_config(_yaml_file(arguments.file)))
    return 0


def _yaml_file(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {name}: {error}") from error


class BackupFailed(ChangeAgentError):
    """The backup arrived but could not be saved locally."""


def _backup(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    if len(_servers(arguments.server)) != 1:
        raise UsageError("backup saves one node's log: give one --server")
    out: Path = arguments.out
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name the file to write")
    try:
        saved = client.backup(out)
    except OSError as error:  # the temporary file or the rename
        raise BackupFailed(f"cannot write {out}: {error}") from error
    output.document(saved.document())
    return 0


def _health(client: Client, arguments: argparse.Namespace, output: Output) -> int:
    servers = _servers(arguments.server)
    if arguments.action is not None:
        if len(servers) != 1:
            raise UsageError(f"health {arguments.action} marks one server: give one --server")
        output.document(client.mark(arguments.action == "up", servers[0]))
        return 0
    healthy = True
    for server in servers:
        try:
            answer = client.health(server)
        except ChangeAgentError as error:
            output.text(f"{server}: unreachable ({error})\n")
            healthy = False
            continue
        output.text(f"{answer.url}: {answer.detail}\n")
        healthy = healthy and answer.ok
    return 0 if healthy else 1
