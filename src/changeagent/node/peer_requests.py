"""Answers to what peers ask of this node: describe and join (anyone who
completed the handshake), forwarded writes, read indexes, leader RPCs and a
joined node's seed (`seeding.py`) (members only: peers that proved the secret).
The transport calls `on_request`; an error goes back as a
`RequestFailed` code that the asking node turns into the same `NodeError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from changeagent.change import parse_change_body
from changeagent.ids import format_id
from changeagent.node.changelog import ChangeLog
from changeagent.node.errors import NodeError, NotAvailable
from changeagent.node.membership import ClusterMembership
from changeagent.node.replica import Replica
from changeagent.node.seeding import METHODS as SEED_METHODS
from changeagent.node.seeding import SeedReceiver
from changeagent.raft import ENTRY_TYPE_CONFIG, Entry
from changeagent.transport import (
    Proposal,
    ProposalReply,
    ReadIndexReply,
    ReadIndexRequest,
    RequestContext,
    RequestFailed,
    RpcRequest,
    RpcResponse,
)

if TYPE_CHECKING:
    from changeagent.transport import Reply, Request, RpcValue

OPEN_METHODS = ("describe", "join")  # before a node is a member, it must be asked these


class PeerRequests:
    def __init__(
        self,
        replica: Replica,
        changes: ChangeLog,
        membership: ClusterMembership,
        seeds: SeedReceiver,
    ) -> None:
        self._replica = replica
        self._changes = changes
        self._membership = membership
        self._seeds = seeds

    async def on_request(self, context: RequestContext, request: Request) -> Reply:
        """Answer a forwarded write, read index or RPC (see transport's `on_request`)."""
        if isinstance(request, RpcRequest) and request.method in OPEN_METHODS:
            if request.method == "describe":
                return RpcResponse(0, self._membership.describe())
            return RpcResponse(0, await self._membership.join(request.payload))
        if not context.member:
            raise RequestFailed("bad_request", "only members may send this request")
        try:
            return await self._answer_member(context, request)
        except NodeError as error:
            raise RequestFailed(error.code, str(error)) from None
        except ValueError as error:  # a malformed forwarded change
            raise RequestFailed("bad_request", str(error)) from None
        except RequestFailed:
            raise
        except Exception as error:  # our bug answering a well-formed request
            where = f"answering a request from node {format_id(context.peer_id)}"
            self._replica.fail(where, error)
            raise RequestFailed("internal", "the request failed on the receiver") from None

    async def _answer_member(self, context: RequestContext, request: Request) -> Reply:
        # The asking member answers its client once it has applied the index: the
        # commit notice held for it (commit_notices.py) goes out with the reply.
        if isinstance(request, Proposal):

            def answer_now(entry: Entry) -> None:
                # From the Ready loop, the moment the write is applied here (a change
                # with no key): two loop iterations before this coroutine resumes.
                # Once this Ready's messages are routed, its commit notice for the
                # asker is held, and goes in the same write. The asking member then
                # waits for the index with its client's answer ready, and writes it
                # from the apply step the notice causes, ahead of its acknowledgement.
                reply = ProposalReply(0, index=entry.index)
                self._replica.after_send(lambda: self._answer_with_notice(context, reply))

            # Up to its first suspension this runs in the transport's read of the
            # frame, with no task of its own (see `Transport`): nothing before the
            # proposal's wait may enter `asyncio.timeout` (the commit wait does not).
            change = parse_change_body(request.data)
            entry = await self._changes.propose_change(change, request.key, answer_now)
            reply: Reply = ProposalReply(0, index=entry.index)
            self._answer_with_notice(context, reply)  # nothing, if answered already
            return reply
        if isinstance(request, ReadIndexRequest):
            reply = ReadIndexReply(0, index=await self._replica.read_index())
            self._answer_with_notice(context, reply)
            return reply
        if not isinstance(request, RpcRequest):
            raise TypeError(f"no answer for a {type(request).__name__}")
        if request.method in SEED_METHODS:  # to a joined node, from the leader adding it
            return RpcResponse(0, await self._seeds.handle(request.method, request.payload))
        return RpcResponse(0, await self._rpc(request.method, request.payload))

    def _answer_with_notice(self, context: RequestContext, reply: Reply) -> None:
        """Write `reply` now, the commit notice held for the asker in the same write
        (the reply first). When the connection is busy, the notice goes at once and
        the reply when the handler returns, as usual."""
        notice = self._replica.take_commit_notice(context.peer_id)
        if not context.reply_now(reply, notice) and notice is not None:
            self._replica.send_message(notice)

    async def _rpc(self, method: str, payload: Any) -> RpcValue:
        replica = self._replica
        if not replica.is_leader:
            raise NotAvailable("this node is not the leader any more", retry_after_s=1)
        if method == "add_member":
            await self._membership.add(str(payload["address"]), str(payload.get("role", "voter")))
            return None
        if method == "remove_member":
            await self._membership.remove(int(payload["id"]))
            return None
        if method == "set_role":
            await self._membership.set_role(int(payload["id"]), str(payload["role"]))
            return None
        if method == "put_config":
            entry = await replica.propose_internal(ENTRY_TYPE_CONFIG, str(payload).encode())
            return entry.index
        raise RequestFailed("unknown_method", f"unknown method {method!r}")
