"""The `changeagent` command: a client subcommand (post, get, changes, tail, mirror,
cluster, config, health, backup) when the arguments name one; a local tool on files
(LOCAL_COMMANDS: each a module with `main(argv) -> int`); else a node (`serve`, or
ChangeAgent's flags alone). Each side is imported only when used, so a client
command starts without loading the server."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = (
    "post",
    "get",
    "changes",
    "tail",
    "mirror",
    "cluster",
    "config",
    "health",
    "backup",
)
# The connection options, which may also come before the command name.
VALUE_OPTIONS = frozenset({"--server", "--user", "--cacert", "--cert", "--cert-key", "--timeout"})
FLAG_OPTIONS = frozenset({"--pretty"})


def client_command(argv: Sequence[str]) -> list[str] | None:
    """The arguments with the command name first (`--server URL get 1` becomes
    `get --server URL 1`), or None when they do not name a client command."""
    position = 0
    while position < len(argv):
        token = argv[position]
        if token in COMMANDS:
            return [token, *argv[:position], *argv[position + 1 :]]
        if token in VALUE_OPTIONS:
            position += 2
        elif token.split("=", 1)[0] in VALUE_OPTIONS or token in FLAG_OPTIONS:
            position += 1
        else:
            return None
    return None


# Commands that work on local files, with no server: name -> module.
LOCAL_COMMANDS: dict[str, str] = {
    "restore": "changeagent.cli.restore",
    "archive": "changeagent.cli.archive",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LOCAL_COMMANDS:
        module = importlib.import_module(LOCAL_COMMANDS[argv[0]])
        status: int = module.main(argv[1:])
        return status
    client_argv = client_command(argv)
    if client_argv is not None:
        from changeagent.cli.client_cli import run_client

        return run_client(client_argv)
    from changeagent.cli.serve import serve_main

    return serve_main(argv)


if __name__ == "__main__":
    sys.exit(main())
