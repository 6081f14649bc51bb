"""The one place that maps errors to HTTP statuses. Every error body is JSON.

Handlers raise `ApiError` (or a node/parse error); the middleware turns it into
`{"error": "..."}` with the right status. aiohttp's own 404/405/413 answers are
rewritten the same way, keeping their headers (e.g. `Allow`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from changeagent.change import ChangeError
from changeagent.config import ConfigError
from changeagent.node.errors import NodeError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER_DEFAULT_S = 1
INTERNAL_ERROR = "internal error; the server log has the details"  # a 500's whole message


class ApiError(Exception):
    """An error answer: status, message and optional extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )


def error_parts(error: Exception) -> tuple[int, str, dict[str, str]] | None:
    """(status, message, extra headers) of an error the API knows; None for any
    other (a programmer error: 500). Also the front door's mapping (api/front_door.py)."""
    if isinstance(error, ApiError):
        return error.status, error.message, error.headers
    if isinstance(error, (ChangeError, ConfigError)):
        return 400, str(error), {}
    if isinstance(error, NodeError):
        headers = {}
        if error.status == 503:
            retry_s = error.retry_after_s or RETRY_AFTER_DEFAULT_S
            headers = {"Retry-After": str(retry_s)}
        return error.status, str(error), headers
    return None


def _from_exception(error: Exception) -> web.Response | None:
    parts = error_parts(error)
    return None if parts is None else json_error(*parts)


_REASONS = {
    404: "not found",
    405: "method not allowed",
    413: "request body is too large",
}


def _from_http_exception(error: web.HTTPException, request: web.Request) -> web.Response:
    headers = {
        name: value
        for name, value in error.headers.items()
        if name.lower() not in ("content-type", "content-length")
    }
    message = _REASONS.get(error.status, error.reason.lower())
    if error.status == 413:
        message = _too_large_message(error, request)
    return json_error(error.status, message, headers)


def _too_large_message(error: web.HTTPException, request: web.Request) -> str:
    """aiohttp raises 413 for a body over `client_max_size` and for a form with
    too many fields; the exception keeps neither limit, the request has both."""
    if "form fields" in (error.text or ""):
        # Older aiohttp releases have no such limit (nor this error).
        fields_max = getattr(request, "client_max_fields", None)
        return f"too many form fields (the limit is {fields_max})"
    return f"request body is too large (the limit is {request.client_max_size} bytes)"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as error:
        return error_response(error, request)


def error_response(error: Exception, request: web.Request) -> web.Response:
    """The answer to `error`, raised while serving `request`: the mapping of the
    error middleware, also called by the metrics' middleware that takes its
    place (`api/observe.py`). An HTTPException below 400 (a redirect) is raised
    again for aiohttp to send."""
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        return _from_http_exception(error, request)
    response = _from_exception(error)
    if response is not None:
        return response
    log.error("unexpected error serving %s %s", request.method, request.path, exc_info=error)
    return json_error(500, INTERNAL_ERROR)
