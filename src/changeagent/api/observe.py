"""Every answered request, once: its metrics and, with --access-log, a log record.

aiohttp calls its access logger after each response is written. That is the
one point that sees every request with its final status and size: routes,
aiohttp's own 404/405, malformed requests, and the long-polls answered straight
to the socket by `deliver_on_wake`. So both the HTTP metrics and the access log
hang there. The duration is measured from `stamp_start`, the outermost
middleware: the time aiohttp passes comes from `loop.time()`, which uvloop
caches per loop iteration at millisecond resolution.

Labels are bounded: the route is the matched resource's canonical path without
the -P prefix ("/changes/{id}", never "/changes/123"); a request no route
matched counts as one route, `UNMATCHED_ROUTE`.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_urldispatcher import AbstractResource

from changeagent.api.auth import parse_basic
from changeagent.api.errors import Handler
from changeagent.metrics import UNMATCHED_ROUTE, NodeMetrics

log = logging.getLogger(__name__)

ACCESS_LOGGER = "changeagent.access"
STARTED = web.RequestKey("changeagent_started", float)  # time.perf_counter() at the start


@web.middleware
async def stamp_start(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost middleware: when the request reached the application."""
    request[STARTED] = time.perf_counter()
    return await handler(request)


def request_observer(
    metrics: NodeMetrics, prefix: str, access_log: bool
) -> type[AbstractAccessLogger]:
    """The class to give `web.AppRunner` as `access_log_class` (aiohttp makes the
    instance), with `access_log=logging.getLogger(ACCESS_LOGGER)`."""

    requests = metrics.requests
    # The label of each route's resource (None: no route matched), made once.
    labels: dict[AbstractResource | None, str] = {None: UNMATCHED_ROUTE}

    class RequestObserver(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            try:
                started = request.get(STARTED)  # None: no middleware ran (a malformed request)
                duration_s = time if started is None else _perf_counter() - started
                resource = _resource(request)
                route = labels.get(resource)
                if route is None:
                    route = labels[resource] = route_label(resource, prefix)
                requests.observe(route, request.method, response.status, duration_s)
                if access_log:
                    log_access(self.logger, request, response, route, duration_s)
            except Exception:  # counting must never disturb serving
                log.exception("could not count or log a request")

        @property
        def enabled(self) -> bool:
            return True  # the metrics want every request, whatever the log level

    return RequestObserver


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
