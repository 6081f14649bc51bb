"""Builds the aiohttp application: routes (under the optional URI prefix) and middleware."""

from __future__ import annotations

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from changeagent.api import backup, changes, operations
from changeagent.api.auth import Authenticator, auth_middleware
from changeagent.api.caching import PageCaching
from changeagent.api.context import STATE_KEY, ApiState
from changeagent.api.cross_site import SAFE_METHODS, same_site_only
from changeagent.api.errors import Handler
from changeagent.api.in_flight import RequestsInFlight
from changeagent.api.observe import counting_middleware
from changeagent.api.openapi import openapi_document
from changeagent.api.streams import StreamSlots
from changeagent.api.ui import add_ui_routes
from changeagent.metrics import NodeMetrics
from changeagent.node.node import Node
from changeagent.transport import Transport, add_cluster_route


def build_app(
    node: Node,
    prefix: str = "",
    authenticator: Authenticator | None = None,
    transport: Transport | None = None,
    client_certificates: bool = False,
    in_flight: RequestsInFlight | None = None,
    page_caching: PageCaching | None = None,
    public_reads: bool = False,
    metrics: NodeMetrics | None = None,
    streams: StreamSlots | None = None,
    access_log: bool = False,
) -> web.Application:
    """The API under `prefix`. With a `transport` (the WebSocket carrier; with -cp
    the links have their own port) peers' links are served at CLUSTER_PATH (never
    under the prefix: peers do not know each other's), and `in_flight` counts
    clients' requests apart from them for the shutdown that `server.py` orders.
    `client_certificates` (-cas) is only declared in the OpenAPI document: the TLS
    listener enforces it. `page_caching`: how HTTP caches may keep pages of
    changes; `public_reads`: reads of changes need no credentials. `metrics`: the
    node's registry for GET /metrics (a new one when not given), where
    `api/observe.py` counts the requests; `access_log`: keep each request's start
    for the access log. `streams`: the limits of feed streams (api/feeds.py)."""
    # The error middleware, which also counts every answer for the metrics (one layer
    # fewer than two). Authentication runs inside it, so a 401 is mapped like any error.
    metrics = metrics if metrics is not None else NodeMetrics(node)
    middlewares: list[Middleware] = [
        counting_middleware(metrics, prefix, stamp=access_log, in_flight=in_flight)
    ]
    if authenticator is not None:
        middlewares.append(auth_middleware(authenticator, prefix, public_reads))
    app = web.Application(middlewares=middlewares, client_max_size=node.limits.body_bytes_max)
    app[STATE_KEY] = ApiState(
        node=node,
        prefix=prefix,
        members=node.cluster,
        metrics=metrics,
        page_caching=page_caching or PageCaching(),
        streams=streams or StreamSlots(),
    )
    limits = node.limits
    document = orjson.dumps(
        openapi_document(
            prefix,
            limits.limit_max,
            limits.block_max_s,
            basic_auth=authenticator is not None,
            client_certificates=client_certificates,
        )
    )

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/", operations.root),
        ("GET", "/openapi.json", openapi),
        ("POST", "/changes", changes.post_change),
        ("GET", "/changes", changes.get_changes),
        ("GET", "/changes/{id}", changes.get_change),
        ("GET", "/health", operations.get_health),
        ("PUT", "/health", operations.set_health),
        ("POST", "/health", operations.set_health),
        ("GET", "/config", operations.get_config),
        ("PUT", "/config", operations.put_config),
        ("GET", "/cluster", operations.get_cluster),
        ("GET", "/cluster/members", operations.get_members),
        ("POST", "/cluster/members", operations.add_member),
        ("GET", "/cluster/members/{id}", operations.get_member),
        ("DELETE", "/cluster/members/{id}", operations.delete_member),
        ("PUT", "/cluster/members/{id}", operations.put_member),
        ("GET", "/version", operations.version),
        ("GET", "/diagnostics", operations.diagnostics),
        ("GET", "/diagnostics/id", operations.node_id),
        ("GET", "/diagnostics/raft", operations.raft_status),
        ("GET", "/diagnostics/raft/state", operations.raft_state),
        ("GET", "/diagnostics/raft/leader", operations.raft_leader),
        ("GET", "/diagnostics/stack", operations.stack),
        ("GET", "/diagnostics/memory", operations.memory),
        ("GET", "/diagnostics/cpu", operations.cpu),
        ("GET", "/metrics", operations.metrics),
        ("GET", "/backup", backup.get_backup),
    ]
    for method, path, handler in routes:
        if method not in SAFE_METHODS:  # a browser's request from another site: 403
            handler = same_site_only(handler)
        app.router.add_route(
            method, prefix + path if path != "/" or not prefix else prefix, handler
        )
    add_ui_routes(app, prefix)  # the dashboard, GET /ui/ (api/ui.py)

    if transport is not None:
        add_cluster_route(app, transport)
    return app
