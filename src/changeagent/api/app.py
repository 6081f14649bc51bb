"""Builds the aiohttp application: routes (under the optional URI prefix) and middleware."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from changeagent.api import changes, operations
from changeagent.api.auth import Authenticator, auth_middleware
from changeagent.api.context import STATE_KEY, ApiState
from changeagent.api.errors import Handler, error_middleware
from changeagent.api.in_flight import RequestsInFlight
from changeagent.api.openapi import openapi_document
from changeagent.node.node import Node
from changeagent.transport import Transport, add_cluster_route


def build_app(
    node: Node,
    prefix: str = "",
    authenticator: Authenticator | None = None,
    transport: Transport | None = None,
    client_certificates: bool = False,
) -> web.Application:
    """The API under `prefix`; with a `transport`, peer links are served at
    CLUSTER_PATH (never under the prefix: peers do not know each other's).
    `client_certificates` (-cas) is only declared in the OpenAPI document: the
    TLS listener enforces it."""
    # Authentication runs inside the error middleware, so a 401 is mapped like any error.
    middlewares: list[Middleware] = [error_middleware]
    # Counted only where shutdown needs it: peers' links on this port (see below).
    in_flight = RequestsInFlight()
    if transport is not None:
        middlewares.insert(0, in_flight.middleware)
    if authenticator is not None:
        middlewares.append(auth_middleware(authenticator, prefix))
    app = web.Application(middlewares=middlewares, client_max_size=node.limits.body_bytes_max)
    app[STATE_KEY] = ApiState(node=node, prefix=prefix, members=node.cluster)
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
        ("GET", "/version", operations.version),
        ("GET", "/diagnostics", operations.diagnostics),
        ("GET", "/diagnostics/id", operations.node_id),
        ("GET", "/diagnostics/raft", operations.raft_status),
        ("GET", "/diagnostics/raft/state", operations.raft_state),
        ("GET", "/diagnostics/raft/leader", operations.raft_leader),
        ("GET", "/diagnostics/stack", operations.stack),
        ("GET", "/diagnostics/memory", operations.memory),
        ("GET", "/diagnostics/cpu", operations.cpu),
    ]
    for method, path, handler in routes:
        app.router.add_route(
            method, prefix + path if path != "/" or not prefix else prefix, handler
        )

    if transport is not None:
        add_cluster_route(app, transport)

    async def wake_long_polls(app: web.Application) -> None:
        # Runs after the listeners stop and before in-flight requests are awaited:
        # long-polls answer at once with what they have, so shutdown is quick. A
        # leader hands over leadership; Raft runs on until the node is closed.
        await node.begin_shutdown()
        if transport is not None:
            closing.add(asyncio.create_task(stop_peers_when_idle(transport)))

    async def stop_peers_when_idle(transport: Transport) -> None:
        # aiohttp now waits for every request, peers' links here included, and
        # those last as long as the peer does. Once clients' requests are done
        # (they may need Raft, and so the links, until then), stop Raft and close
        # the links, so shutdown does not wait out the grace period for them.
        await in_flight.wait_idle()
        await node.close()
        await transport.close()

    async def wait_closing(app: web.Application) -> None:
        await asyncio.gather(*closing)

    closing: set[asyncio.Task[None]] = set()
    app.on_shutdown.append(wake_long_polls)
    app.on_cleanup.append(wait_closing)
    return app
