"""Clients' requests in flight, so that shutdown can tell when they are done.

Peers' links on the API port (WebSocket requests at CLUSTER_PATH) are not
counted: they last as long as the peer does, and shutdown must not wait for
them the way it waits for clients' requests (which may need Raft, and so those
links, to finish).

Nor is a request whose client has gone (it timed out or hung up): aiohttp does
not cancel its handler, which may go on waiting for a commit, but nobody reads
the answer, and aiohttp itself no longer waits for it at shutdown.
"""

from __future__ import annotations

from aiohttp import web

from changeagent.transport import CLUSTER_PATH


class RequestsInFlight:
    """Counted by the API's one middleware (`api/observe.py`), which calls `enter`
    and `leave` around each request: a middleware of its own would cost every
    request a coroutine, and keep a frame for each waiting long-poll."""

    def __init__(self) -> None:
        self._requests: dict[int, web.Request] = {}  # by id(): requests are unhashable

    def enter(self, request: web.Request) -> int | None:
        """Counts `request` (unless it is a peer's link); the key for `leave`."""
        if request.path == CLUSTER_PATH:
            return None
        key = id(request)
        self._requests[key] = request
        return key

    def leave(self, key: int | None) -> None:
        if key is not None:
            del self._requests[key]

    @property
    def busy(self) -> bool:
        """True while a request is being answered to a client still connected."""
        return any(_connected(request) for request in self._requests.values())


def _connected(request: web.Request) -> bool:
    transport = request.transport  # None once the connection is lost
    return transport is not None and not transport.is_closing()
