"""Graceful shutdown of a serving node, in the order `server.py` owns.

aiohttp's runner cleanup stops the listeners, runs `on_shutdown`, waits for
handlers (up to the grace period), then runs `on_cleanup`. Within that:

1. `begin` (on_shutdown): long-polls answer at once with what they have, and a
   leader hands leadership over (at most one election timeout).
2. Clients' requests in flight may still need Raft, and so the peer links, to
   commit: they get at most DRAIN_ELECTION_TIMEOUTS, and no longer once a
   majority of voters is out of reach over live links (members stop
   independently: a write whose quorum has gone would otherwise wait out the
   commit timeout). A request whose client has gone is not waited for.
3. Then Raft stops (whatever still waits is answered 503 "may have committed":
   retry with the same Idempotency-Key) and the peer links close, which also ends
   peers' requests on the API port, so aiohttp's own wait ends at once.
4. `end` (on_cleanup) waits for 2-3. `server.py` then closes storage.

A member therefore stops within about three election timeouts plus the links'
close timeout (~5 s with the defaults; ~1 s when idle), whatever happened before.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from changeagent.api.front_door import FrontDoor
from changeagent.api.in_flight import RequestsInFlight
from changeagent.config import SECOND_NS
from changeagent.node.node import Node
from changeagent.raft.quorum import has_quorum
from changeagent.transport import Transport

# After SIGTERM (and the leader's hand-over), clients' requests in flight get at
# most this many election timeouts to finish: a write that can commit does so in
# milliseconds. Then Raft stops and whatever still waits is answered 503.
DRAIN_ELECTION_TIMEOUTS = 2
_DRAIN_POLL_S = 0.02
# Once Raft has stopped, every write still waiting in the front door is answered at
# once; this bounds the wait for those connections to close.
FRONT_DOOR_CLOSE_S = 1.0


class GracefulShutdown:
    """Hooks for one application; `in_flight` counts clients' requests when peers'
    links share the API port (aiohttp waits for those links too)."""

    def __init__(
        self,
        node: Node,
        transport: Transport | None,
        in_flight: RequestsInFlight | None,
        door: FrontDoor | None = None,
    ) -> None:
        self._node = node
        self._transport = transport
        self._in_flight = in_flight
        self._door = door  # writes answered ahead of aiohttp, which does not wait for them
        self._handlers_done = asyncio.Event()
        self._stopping: set[asyncio.Task[None]] = set()

    def attach(self, app: web.Application) -> None:
        app.on_shutdown.append(self._begin)
        app.on_cleanup.append(self._end)

    async def _begin(self, app: web.Application) -> None:
        await self._node.begin_shutdown()
        self._stopping.add(asyncio.create_task(self._stop_when_drained()))

    async def _end(self, app: web.Application) -> None:
        self._handlers_done.set()
        await asyncio.gather(*self._stopping)
        if self._door is not None:  # their last answers (503 once Raft has stopped) sent
            self._door.close()
            await self._door.wait_closed(FRONT_DOOR_CLOSE_S)

    async def _stop_when_drained(self) -> None:
        await self._drain()
        await self._node.close()
        if self._transport is not None:
            await self._transport.close()

    def _busy(self) -> bool:
        if self._door is not None and self._door.busy:
            return True
        if self._in_flight is not None:
            return self._in_flight.busy
        return not self._handlers_done.is_set()  # aiohttp's own wait is the measure

    async def _drain(self) -> None:
        """Until clients' requests in flight are answered, while they can be."""
        loop = asyncio.get_running_loop()
        election_timeout_s = self._node.settings.election_timeout_ns / SECOND_NS
        deadline = loop.time() + DRAIN_ELECTION_TIMEOUTS * election_timeout_s
        while self._busy() and loop.time() < deadline and self._quorum_reachable():
            if self._handlers_done.is_set():
                # aiohttp's wait is over, requests it does not know of (the front
                # door's, or counted in `in_flight`) are not: waiting on the set event
                # would return at once, and this loop would starve the event loop.
                await asyncio.sleep(_DRAIN_POLL_S)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DRAIN_POLL_S):
                    await self._handlers_done.wait()

    def _quorum_reachable(self) -> bool:
        """A majority of voters is this node or connected to it by a live link."""
        node = self._node
        if node.failure is not None:
            return False  # Raft has stopped: nothing commits
        if self._transport is None:
            return True
        status = node.status()
        if len(status.voters) <= 1:
            return True
        links = self._transport.stats().peers
        reachable = sum(
            1
            for voter in status.voters
            if voter == status.node_id or (voter in links and links[voter].connected)
        )
        return has_quorum(reachable, len(status.voters))
