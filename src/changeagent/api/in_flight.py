"""Clients' requests in flight, so that shutdown can tell when they are done.

Peers' links on the API port (WebSocket requests at CLUSTER_PATH) are not
counted: they last as long as the peer does, and shutdown must not wait for
them the way it waits for clients' requests (which may need Raft, and so those
links, to finish).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from changeagent.api.errors import Handler
from changeagent.transport import CLUSTER_PATH


class RequestsInFlight:
    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == CLUSTER_PATH:
            return await handler(request)
        self.count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()
