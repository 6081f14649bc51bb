"""What the client subcommands print: changes in the server's JSON shape, compact
(one per line, for tools) or indented with --pretty (for people)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

import orjson

from changeagent.client import Change, Page


class UsageError(Exception):
    """A mistake in how the command was called: exit status 2."""


def change_document(change: Change) -> dict[str, Any]:
    """A change as the server shows it: `_id`, `_ts`, type and tags when set, data."""
    document: dict[str, Any] = {"_id": change.id, "_ts": change.ts}
    if change.type:
        document["type"] = change.type
    if change.tags:
        document["tags"] = list(change.tags)
    document["data"] = change.data
    return document


def page_document(page: Page) -> dict[str, Any]:
    """A page as GET /changes answers it."""
    document: dict[str, Any] = {
        "changes": [change_document(change) for change in page.changes],
        "atStart": page.at_start,
        "atEnd": page.at_end,
    }
    if page.missed:
        document["missedChanges"] = True
        document["firstRetained"] = page.first_retained
    return document


@dataclass
class Output:
    stream: TextIO
    pretty: bool = False

    def document(self, document: Any) -> None:
        option = orjson.OPT_INDENT_2 if self.pretty else 0
        self.stream.write(orjson.dumps(document, option=option).decode() + "\n")

    def text(self, text: str) -> None:
        self.stream.write(text if text.endswith("\n") or not text else text + "\n")

    def flush(self) -> None:
        self.stream.flush()
