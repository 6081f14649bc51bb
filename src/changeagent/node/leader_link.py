"""Requests to the leader over the peer transport: forwarded writes and RPCs.

A leader that died or was deposed never answers, and waiting for a request's
own timeout would stall the client, so every request is given up as soon as
this node sees another leader (or none): the client gets a 503 that says the
request may have taken effect, and retries (with the same Idempotency-Key).
A request is awaited in its caller's task: the transport fails its future on a
timeout, a lost connection, or `give_up_requests` from `leadership_changed`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from changeagent.change import NewChange
from changeagent.node.errors import CommitTimeout, NodeError, NotAvailable, error_from_code
from changeagent.transport import RequestFailed

if TYPE_CHECKING:
    from changeagent.transport import RpcValue, Transport

# Never on the wire: the asking node fails its own requests with it.
ERROR_LEADER_CHANGED = "leader_changed"


class LeaderLink:
    """Reaches the leader `leader_id()` names; `leadership_changed` on every change."""

    def __init__(self, leader_id: Callable[[], int], in_cluster: Callable[[], bool]) -> None:
        self._leader_id = leader_id
        self._in_cluster = in_cluster
        self.transport: Transport | None = None
        self._asked: set[int] = set()  # leaders that may still owe an answer

    def leadership_changed(self) -> None:
        """Called on every change of role or leader: requests to a node that no
        longer leads fail at once (`ERROR_LEADER_CHANGED`), in their callers' tasks."""
        leader = self._leader_id()
        transport = self.transport
        if transport is None:
            return
        for former in self._asked - {leader}:
            transport.give_up_requests(former, ERROR_LEADER_CHANGED, "the leader changed")
        self._asked &= {leader}

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
        try:
            return await transport.propose(
                leader, change.type, body, key, timeout_s=timeout_s, on_index=on_index
            )
        except RequestFailed as error:
            raise _error_from_reply(error) from None

    async def call(self, method: str, payload: RpcValue, timeout_s: float) -> RpcValue:
        """Run an operation on the leader (membership, settings); its answer's payload."""
        leader, transport = self._link()
        try:
            return await transport.call(leader, method, payload, timeout_s=timeout_s)
        except RequestFailed as error:
            raise _error_from_reply(error) from None

    def _link(self) -> tuple[int, Transport]:
        """The leader to ask, remembered until it answers or stops leading. The
        request is awaited in the caller's own task (no task or wait of its own per
        forwarded write): it times out by failing its future, and a change of leader
        fails it through `give_up_requests`."""
        leader = self._leader_id()
        if not leader or self.transport is None or not self._in_cluster():
            raise NotAvailable("no leader is known; retry later", retry_after_s=1)
        self._asked.add(leader)
        return leader, self.transport


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
    if error.code == ERROR_LEADER_CHANGED:
        return NotAvailable(
            "the leader changed while the request was forwarded; it may have "
            "taken effect. Retry (with the same Idempotency-Key for a write)",
            retry_after_s=1,
        )
    return NotAvailable(f"the leader could not take the request: {error.message}", retry_after_s=1)
