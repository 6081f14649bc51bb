"""Builds the aiohttp application: routes (under the optional URI prefix) and middleware."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from changeagent.api import changes, operations
from changeagent.api.auth import Authenticator, auth_middleware
from changeagent.api.context import STATE_KEY, ApiState
from changeagent.api.errors import Handler, error_middleware
from changeagent.api.in_flight import RequestsInFlight
from changeagent.api.openapi import openapi_document
from changeagent.config import SECOND_NS
from changeagent.node.node import Node
from changeagent.transport import Transport, add_cluster_route

# After SIGTERM (and the leader's hand-over), clients' requests in flight get at
# most this many election timeouts to finish: a write that can commit does so in
# milliseconds. Then Raft stops and whatever still waits is answered 503.
DRAIN_ELECTION_TIMEOUTS = 2
_DRAIN_POLL_S = 0.02


def build_app(
    node: Node,
    prefix: str = "",
    authenticator: Authenticator | None = None,
    transport: Transport | None = None,
    client_certificates: bool = False,
    serve_links: bool = True,
) -> web.Application:
    """The API under `prefix`. `transport` is the node's peer links: shutdown
    closes them, and with `serve_links` (the WebSocket carrier; with -cp they
    have their own port) they are served at CLUSTER_PATH (never under the
    prefix: peers do not know each other's). `client_certificates` (-cas) is
    only declared in the OpenAPI document: the TLS listener enforces it."""
    links_here = transport is not None and serve_links
    # Authentication runs inside the error middleware, so a 401 is mapped like any error.
    middlewares: list[Middleware] = [error_middleware]
    # Counted only where shutdown needs it: peers' links on this port (see below).
    in_flight = RequestsInFlight()
    if links_here:
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

    if transport is not None and links_here:
        add_cluster_route(app, transport)

    # Shutdown (aiohttp: listeners stop, on_shutdown, wait for handlers up to the
    # grace period, on_cleanup). Raft and the peer links must outlive clients'
    # requests that wait for a commit, but only while a commit can come: members
    # stop independently (an idle one at once), so a write in flight may lose its
    # quorum; it then waited out the commit timeout, and shutdown with it.
    handlers_done = asyncio.Event()

    def busy() -> bool:
        # aiohttp waits for peers' links on this port too, so there clients'
        # requests are counted; otherwise aiohttp's wait is the measure.
        return in_flight.busy if links_here else not handlers_done.is_set()

    async def begin_shutdown(app: web.Application) -> None:
        # Runs after the listeners stop and before in-flight requests are awaited:
        # long-polls answer at once with what they have, so shutdown is quick. A
        # leader hands over leadership (at most one election timeout).
        await node.begin_shutdown()
        closing.add(asyncio.create_task(stop_when_drained()))

    async def stop_when_drained() -> None:
        await _drain(node, transport, busy, handlers_done)
        # Whatever still waits for a commit is answered 503 ("may have committed":
        # retry with the same Idempotency-Key); forwarded writes fail likewise
        # when the links close, which also ends peers' requests on this port.
        await node.close()
        if transport is not None:
            await transport.close()

    async def end_shutdown(app: web.Application) -> None:
        handlers_done.set()
        await asyncio.gather(*closing)

    closing: set[asyncio.Task[None]] = set()
    app.on_shutdown.append(begin_shutdown)
    app.on_cleanup.append(end_shutdown)
    return app


async def _drain(
    node: Node, transport: Transport | None, busy: Callable[[], bool], done: asyncio.Event
) -> None:
    """Until clients' requests in flight are answered, while they can be: at most
    DRAIN_ELECTION_TIMEOUTS, and not once a majority of voters is out of reach
    (peers that stopped close their links: no commit can come)."""
    loop = asyncio.get_running_loop()
    election_timeout_s = node.settings.election_timeout_ns / SECOND_NS
    deadline = loop.time() + DRAIN_ELECTION_TIMEOUTS * election_timeout_s
    while busy() and loop.time() < deadline and _quorum_reachable(node, transport):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DRAIN_POLL_S):
                await done.wait()


def _quorum_reachable(node: Node, transport: Transport | None) -> bool:
    """A majority of voters is this node or connected to it by a live link."""
    if node.failure is not None:
        return False  # Raft has stopped: nothing commits
    if transport is None:
        return True
    status = node.status()
    voters = status.voters
    if len(voters) <= 1:
        return True
    links = transport.stats().peers
    reachable = sum(
        1
        for voter in voters
        if voter == status.node_id or (voter in links and links[voter].connected)
    )
    return 2 * reachable > len(voters)
