"""changeagent.client: a Python client of a changeagent cluster.

`Client` (sync) and `AsyncClient` (asyncio) are thin shells over httpx around one
sans-I/O core (core.py) that builds requests, parses answers, maps error statuses
to the exceptions of errors.py, and decides retries: connection failures, timeouts
and 503 move to the next configured server after a jittered exponential backoff
(at least Retry-After). Posts carry an Idempotency-Key, so retries store once.
See docs/CLIENT.md.
"""

from changeagent.client.core import RetryPolicy
from changeagent.client.errors import (
    BadRequest,
    ChangeAgentError,
    ChangesMissed,
    Conflict,
    ConnectionFailed,
    InvalidBackup,
    NotFound,
    PayloadTooLarge,
    ServerError,
    Unauthorized,
    Unavailable,
)
from changeagent.client.model import Backup, Change, Health, Page
from changeagent.client.shells import AsyncClient, Client

__all__ = [
    "AsyncClient",
    "Backup",
    "BadRequest",
    "Change",
    "ChangeAgentError",
    "ChangesMissed",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Health",
    "InvalidBackup",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "RetryPolicy",
    "ServerError",
    "Unauthorized",
    "Unavailable",
]
