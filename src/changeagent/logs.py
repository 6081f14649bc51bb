"""How a node logs: text for people (the default) or one JSON object per line.

`--log-format json` writes each record as one line holding `time` (UTC, ISO
8601 with milliseconds), `level`, `logger`, `message`, this node's `node` and
`cluster` ids in base 36 (once known; cluster "0" is standalone), every
structured field the call passed with `extra=` (e.g. the access log's method,
route, status, duration_ms, bytes, user), and `exception` with the traceback
when there is one. The standard fields win over an `extra` of the same name.

The ids come from `set_log_identity`, which the server calls with the node it
runs (one node per process: the ids are read when each record is written, so a
node that forms, joins or leaves a cluster logs its new cluster id at once).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from changeagent.ids import format_id

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has (and `message`/`asctime`, set by formatters): the rest
# of a record's attributes were passed with `extra=`.
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

Identity = Callable[[], tuple[int, int]]  # (node id, cluster id)
_identity: Identity | None = None


def set_log_identity(identity: Identity | None) -> None:
    """Where JSON records take the node and cluster ids from (None: nowhere)."""
    global _identity
    _identity = identity


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            name: value
            for name, value in record.__dict__.items()
            if name not in _STANDARD_ATTRIBUTES and not name.startswith("_")
        }
        document["time"] = _utc_time(record.created)
        document["level"] = record.levelname
        document["logger"] = record.name
        document["message"] = record.getMessage()
        identity = _identity
        if identity is not None:
            try:
                node_id, cluster_id = identity()
            except Exception:  # e.g. the node is being torn down: log without ids
                pass
            else:
                document["node"] = format_id(node_id)
                document["cluster"] = format_id(cluster_id)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _utc_time(created: float) -> str:
    seconds = int(created)
    milliseconds = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{milliseconds:03d}Z"


def configure_logging(verbosity: int, log_format: str = "text") -> None:
    """Log to stderr: INFO, or DEBUG with a verbosity of 1 or more."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.DEBUG if verbosity > 0 else logging.INFO, handlers=[handler])
