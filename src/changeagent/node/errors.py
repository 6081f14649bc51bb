"""Errors the node raises. Each carries its HTTP status and the code it travels
under between members (a follower forwarding a write gets the leader's error
back as the same class), so the API maps them in one table with no guessing.
"""

from __future__ import annotations

from typing import ClassVar


class NodeError(Exception):
    """Base class: the message is safe to show to clients."""

    status: ClassVar[int] = 503
    code: ClassVar[str] = "not_available"
    # Seconds a client should wait before retrying (a Retry-After header), if any.
    retry_after_s: int | None = None


class NotAvailable(NodeError):
    """The node cannot do it now (no leader, shutting down, storage failed): 503."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CommitTimeout(NodeError):
    """A write was not committed in time; it may still commit later: 503."""

    code = "commit_timeout"
    retry_after_s = 1


class Overloaded(NodeError):
    """Too many proposals waiting; the client should retry later: 503."""

    code = "overloaded"
    retry_after_s = 1


class DataCorrupted(NodeError):
    """A checksum did not match: the node stops serving that data: 503, reported."""

    code = "data_corrupted"


class BadRequest(NodeError):
    """The request is well formed but cannot be done as asked: 400."""

    status = 400
    code = "bad_request"


class NotFound(NodeError):
    """The thing named does not exist here (e.g. a member id): 404."""

    status = 404
    code = "not_found"


class Conflict(NodeError):
    """Another operation of the same kind is in progress (a membership change), or
    the request conflicts with the cluster as it stands (demoting its last voter): 409."""

    status = 409
    code = "conflict"


class PayloadTooLarge(NodeError):
    """A change too large to ever be stored, whatever the retries: 413."""

    status = 413
    code = "payload_too_large"


ERRORS_BY_CODE: dict[str, type[NodeError]] = {
    kind.code: kind
    for kind in (
        NotAvailable,
        CommitTimeout,
        Overloaded,
        DataCorrupted,
        BadRequest,
        NotFound,
        Conflict,
        PayloadTooLarge,
    )
}


def error_from_code(code: str, message: str) -> NodeError | None:
    """The error a member answered with (by its code), or None for other codes."""
    kind = ERRORS_BY_CODE.get(code)
    return kind(message) if kind is not None else None
