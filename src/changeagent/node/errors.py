"""Errors the node raises; the API maps each to one HTTP status in one place."""

from __future__ import annotations


class NodeError(Exception):
    """Base class: the message is safe to show to clients."""


class NotAvailable(NodeError):
    """The node cannot take writes now (storage failed, shutting down): 503."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CommitTimeout(NodeError):
    """A write was not committed in time; it may still commit later: 503."""


class Overloaded(NodeError):
    """Too many proposals waiting; the client should retry later: 503."""


class DataCorrupted(NodeError):
    """A checksum did not match: the node stops serving that data: 500-class, reported."""


class BadRequest(NodeError):
    """The request is well formed but cannot be done as asked: 400."""


class Conflict(NodeError):
    """Another operation of the same kind is in progress (a membership change): 409."""


class NotFound(NodeError):
    """The thing named does not exist here (e.g. a member id): 404."""


class PayloadTooLarge(NodeError):
    """A change too large to ever be stored, whatever the retries: 413."""
