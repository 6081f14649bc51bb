"""Every answered request, once: its metrics and, with --access-log, a log record.

The metrics are counted by `counting_middleware`, which is also the error
middleware (one middleware layer costs every request a coroutine and a frame
on each resume): it times the handler with `time.perf_counter()`, maps errors
to answers, and counts the status it answers with (also aiohttp's own 404/405
and the long-polls answered straight to the socket by a delivery hook).
aiohttp's access-log hook (which also sees malformed requests and the bytes
written) cost ~1.7 µs a request more in a bare aiohttp server, so it is used
only for the access log (`--access-log`), whose records carry the bytes.
Requests that aiohttp refuses before routing (malformed HTTP, answered 400)
are therefore in the access log but not in the metrics.

Labels are bounded: the route is the matched resource's canonical path without
the -P prefix ("/changes/{id}", never "/changes/123"); a request no route
matched counts as one route, `UNMATCHED_ROUTE`.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractResource, AbstractRoute

from changeagent.api.auth import parse_basic
from changeagent.api.errors import Handler, error_response
from changeagent.api.in_flight import RequestsInFlight
from changeagent.metrics import REQUEST_BUCKETS_S, UNMATCHED_ROUTE, NodeMetrics, add_duration

log = logging.getLogger(__name__)

ACCESS_LOGGER = "changeagent.access"
STARTED = web.RequestKey("changeagent_started", float)  # time.perf_counter() at the start


def counting_middleware(
    metrics: NodeMetrics,
    prefix: str,
    stamp: bool = False,
    in_flight: RequestsInFlight | None = None,
) -> Middleware:
    """The error middleware with counting: maps errors to answers as
    `api/errors.py`'s `error_middleware` does (whose place it takes: one layer
    fewer for every request) and counts each answer in `metrics` by route, method
    and status, with its duration. `stamp` (--access-log) also keeps the start
    time in the request for the access log. `in_flight`: the requests shutdown
    waits for, counted here too (one layer, one frame per waiting request)."""
    counts = metrics.requests
    perf_counter = time.perf_counter
    labels: dict[AbstractResource | None, str] = {None: UNMATCHED_ROUTE}  # made once each
    # (aiohttp route, status) -> its numbers in `counts`: a route object stands for its
    # path and method, so most requests need one lookup. Only routes of the router go
    # in (bounded); aiohttp makes a new route object for each request none matched.
    by_route: dict[tuple[AbstractRoute, int], list[float]] = {}

    def numbers(request: web.Request, route: AbstractRoute, status: int) -> list[float]:
        resource = route.resource
        label = labels.get(resource)
        if label is None:
            label = labels[resource] = route_label(resource, prefix)
        found = counts.numbers(label, request.method, status)
        if resource is not None and route.method == request.method:  # not a "*" route
            by_route[route, status] = found
        return found

    @web.middleware
    async def counting(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = perf_counter()
        if stamp:
            request[STARTED] = started
        key = None if in_flight is None else in_flight.enter(request)
        try:
            response: web.StreamResponse = await handler(request)
        except Exception as error:
            try:
                response = error_response(error, request)
            except web.HTTPException as redirect:
                route = request.match_info.route
                add_duration(numbers(request, route, redirect.status), perf_counter() - started)
                raise
        finally:
            if in_flight is not None:
                in_flight.leave(key)
        route = request.match_info.route
        status = response.status
        found = by_route.get((route, status)) or numbers(request, route, status)
        # add_duration(found, ...), inline: this runs for every request.
        duration_s = perf_counter() - started
        found[0] += duration_s
        found[1 + bisect_left(REQUEST_BUCKETS_S, duration_s)] += 1
        return response

    return counting


def access_logger(prefix: str) -> type[AbstractAccessLogger]:
    """The class to give `web.AppRunner` as `access_log_class` with --access-log
    (aiohttp makes the instance), with `access_log=logging.getLogger(ACCESS_LOGGER)`:
    called after each answer is written, so it has the bytes."""

    class AccessLogger(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            try:
                started = request.get(STARTED)  # None: no middleware ran (a malformed request)
                duration_s = time if started is None else _perf_counter() - started
                route = route_label(_resource(request), prefix)
                log_access(self.logger, request, response, route, duration_s)
            except Exception:  # logging must never disturb serving
                log.exception("could not log a request")

    return AccessLogger


_perf_counter = time.perf_counter  # `log` has a parameter named `time`


def _resource(request: web.BaseRequest) -> AbstractResource | None:
    """The resource of the route the request matched, None when none did."""
    try:
        match_info = request.match_info  # type: ignore[attr-defined]  # a web.Request
    except AssertionError:  # aiohttp asserts it: a malformed request never reached the router
        return None
    route = match_info.route if match_info is not None else None
    return route.resource if route is not None else None


def route_label(resource: AbstractResource | None, prefix: str) -> str:
    """The resource's canonical path without `prefix`, or UNMATCHED_ROUTE."""
    if resource is None:
        return UNMATCHED_ROUTE
    canonical = str(resource.canonical)
    if prefix and canonical.startswith(prefix):
        canonical = canonical[len(prefix) :] or "/"
    return canonical


def log_access(
    logger: logging.Logger,
    request: web.BaseRequest,
    response: web.StreamResponse,
    route: str,
    duration_s: float,
) -> None:
    """One INFO record: the text a person reads, the same facts as fields for
    `--log-format json`."""
    credentials = parse_basic(request.headers.get("Authorization"))
    user = credentials[0].decode(errors="replace") if credentials is not None else "-"
    duration_ms = round(duration_s * 1000, 3)
    size = response.body_length
    remote = request.remote or "-"
    logger.info(
        '%s %s "%s %s" %d %d %.3fms',
        remote,
        user,
        request.method,
        request.path,
        response.status,
        size,
        duration_ms,
        extra={
            "remote": remote,
            "user": user,
            "method": request.method,
            "route": route,
            "path": request.path,
            "status": response.status,
            "bytes": size,
            "duration_ms": duration_ms,
        },
    )
