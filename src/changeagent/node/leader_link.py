"""Requests to the leader over the peer transport: forwarded writes and RPCs.

A leader that died or was deposed never answers, and waiting for a request's
own timeout would stall the client, so every request is given up as soon as
this node sees another leader (or none): the client gets a 503 that says the
request may have taken effect, and retries (with the same Idempotency-Key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from changeagent.change import NewChange
from changeagent.node.errors import CommitTimeout, NodeError, NotAvailable, error_from_code
from changeagent.transport import RequestFailed

if TYPE_CHECKING:
    from changeagent.transport import RpcValue, Transport

T = TypeVar("T")


class LeaderLink:
    """Reaches the leader `leader_id()` names; `leadership_changed` on every change."""

    def __init__(self, leader_id: Callable[[], int], in_cluster: Callable[[], bool]) -> None:
        self._leader_id = leader_id
        self._in_cluster = in_cluster
        self.transport: Transport | None = None
        self._changed: asyncio.Future[None] | None = None

    def leadership_changed(self) -> None:
        """Called on every change of role or leader: pending requests re-check."""
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def forward_change(
        self,
        change: NewChange,
        key: str,
        timeout_s: float,
        on_index: Callable[[int], None] | None = None,
    ) -> int:
        """Have the leader store `change`; the index it was stored at (committed: the
        leader answers once it is). `on_index(index)`: called as the answer is read,
        before this returns (see `Transport.propose`)."""
        body = orjson.dumps(
            {"type": change.type, "tags": change.tags, "data": orjson.Fragment(change.data_json)}
        )
        leader, transport = self._link()
        request = transport.propose(
            leader, change.type, body, key, timeout_s=timeout_s, on_index=on_index
        )
        return await self._while_leader(leader, request)

    async def call(self, method: str, payload: RpcValue, timeout_s: float) -> RpcValue:
        """Run an operation on the leader (membership, settings); its answer's payload."""
        leader, transport = self._link()
        return await self._while_leader(
            leader, transport.call(leader, method, payload, timeout_s=timeout_s)
        )

    def _link(self) -> tuple[int, Transport]:
        leader = self._leader_id()
        if not leader or self.transport is None or not self._in_cluster():
            raise NotAvailable("no leader is known; retry later", retry_after_s=1)
        return leader, self.transport

    async def _while_leader(self, leader: int, call: Coroutine[Any, Any, T]) -> T:
        # A task of its own, never run eagerly in the caller's: the request's
        # `asyncio.timeout` must cancel the request, not the caller's task (run
        # eagerly, it captured the HTTP handler's, and a forwarded write whose
        # leader never answered lost its connection instead of getting a 503).
        request = asyncio.ensure_future(call)
        try:
            while not request.done():
                changed = self._next_change()
                await asyncio.wait((request, changed), return_when=asyncio.FIRST_COMPLETED)
                if not request.done() and self._leader_id() != leader:
                    raise NotAvailable(
                        "the leader changed while the request was forwarded; it may have "
                        "taken effect. Retry (with the same Idempotency-Key for a write)",
                        retry_after_s=1,
                    )
            return request.result()
        except RequestFailed as error:
            raise _error_from_reply(error) from None
        finally:
            if not request.done():
                request.cancel()

    def _next_change(self) -> asyncio.Future[None]:
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed


def _error_from_reply(error: RequestFailed) -> NodeError:
    known = error_from_code(error.code, error.message)
    if known is not None:
        return known
    if error.code == "timeout":
        return CommitTimeout(
            "the leader did not answer in time; the change may still commit. "
            "Retry with the same Idempotency-Key to get it exactly once"
        )
    if error.code == "disconnected":
        return NotAvailable(
            "the connection to the leader broke; the change may have committed. "
            "Retry with the same Idempotency-Key to get it exactly once",
            retry_after_s=1,
        )
    return NotAvailable(f"the leader could not take the request: {error.message}", retry_after_s=1)
