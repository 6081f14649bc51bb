"""The client's exceptions, drawn once:

ChangeAgentError
├── ChangesMissed         follow(): purge removed changes it had not yet seen
├── ConnectionFailed      no configured server could be reached (after retries)
├── InvalidBackup         backup(): the file did not pass its length or checksum check
└── ServerError           a server answered with an error status and JSON `error`
    ├── BadRequest        400
    ├── Unauthorized      401 (missing or wrong Basic credentials)
    ├── NotFound          404
    ├── Conflict          409
    ├── PayloadTooLarge   413
    └── Unavailable       503, still after the retries
"""

from __future__ import annotations


class ChangeAgentError(Exception):
    """Base of every error this client raises."""


class ConnectionFailed(ChangeAgentError):
    """No configured server answered: connection refused, reset or timed out on every
    attempt. A post that ends here may still have been stored; retry it with the same
    idempotency key."""


class ChangesMissed(ChangeAgentError):
    """follow() found that purge removed changes after its position that it never
    yielded; `first_retained` is the first id still stored."""

    def __init__(self, since: int, first_retained: int | None) -> None:
        super().__init__(
            f"changes after {since} were purged unseen; first retained: {first_retained}"
        )
        self.since = since
        self.first_retained = first_retained


class InvalidBackup(ChangeAgentError):
    """backup(): what the server sent is not a complete, intact backup file (short,
    checksum mismatch, not a backup at all); nothing was saved."""


class ServerError(ChangeAgentError):
    """A server answered with an error status; `message` is its JSON `error`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class BadRequest(ServerError):
    """400: the server refused the request as malformed."""


class Unauthorized(ServerError):
    """401: the credentials are missing or wrong."""


class NotFound(ServerError):
    """404: no such change (or path)."""


class Conflict(ServerError):
    """409: the request conflicts with the cluster's state (e.g. a membership change)."""


class PayloadTooLarge(ServerError):
    """413: the change is too large to store."""


class Unavailable(ServerError):
    """503 from every attempt: no leader, no quorum, or the node cannot store now."""


ERROR_BY_STATUS: dict[int, type[ServerError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    503: Unavailable,
}


def error_for(status: int, message: str) -> ServerError:
    """The typed exception for an error status (plain ServerError for the others)."""
    return ERROR_BY_STATUS.get(status, ServerError)(status, message)
