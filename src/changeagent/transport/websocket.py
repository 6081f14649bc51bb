"""The WebSocket carrier's server side: a route on the node's aiohttp application."""

from __future__ import annotations

from aiohttp import web

from changeagent.transport.streams import CLUSTER_PATH
from changeagent.transport.transport import Transport
from changeagent.transport.wslink import adopt


def add_cluster_route(app: web.Application, transport: Transport, path: str = CLUSTER_PATH) -> None:
    """Serve peer links at `path` (GET, WebSocket upgrade) on `app`.

    The route authenticates peers with the HELLO handshake, so an HTTP
    authentication middleware must let `path` through untouched.
    """
    frame_bytes_max = transport.config.frame_bytes_max

    async def stream(request: web.Request) -> web.StreamResponse:
        if not transport.accepting():
            raise web.HTTPServiceUnavailable(
                text='{"error":"too many cluster connections"}', content_type="application/json"
            )
        # aiohttp answers the upgrade only: it never reads a frame of this socket,
        # which `adopt` takes before the first (the dialer waits for our CHALLENGE).
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        remote = f"{request.remote}" if request.remote else "?"
        raw = request.transport
        if raw is None:  # gone during the upgrade
            return socket
        await transport.accept(adopt(raw, frame_bytes_max, remote))
        return socket

    app.router.add_get(path, stream)
