"""Cluster membership through the API, and the requests peers send each other.

ChangeAgent's walkthrough: POST /cluster/members to a standalone node with its
own address creates a cluster (random id and secret); later POSTs (on any
member, forwarded to the leader) add a node by address:

1. `describe` RPC over a one-shot connection: the node's id, cluster and
   whether it holds changes (refused with 400: a node of another cluster, one
   that holds changes, one already a member at another address);
2. `join` RPC: the new node discards its own (empty) history, takes the
   cluster id and secret, and waits for the leader;
3. the leader proposes it as a learner (its address rides in the entry),
   streams the log or a snapshot to it, and promotes it to voter once its
   progress shows it streaming (`Node._promote_loop`); the POST answers then.

DELETE /cluster/members/{id} proposes the removal; the removed node, once it
applies its own removal, writes a RESET membership entry into its own log and
becomes a standalone one-member cluster with its data. One membership change at
a time: 409 while one is in progress.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from typing import TYPE_CHECKING, Any

from changeagent.change import parse_change_body
from changeagent.node.errors import BadRequest, Conflict, NodeError, NotAvailable, NotFound
from changeagent.node.node import (
    META_CLUSTER_ID,
    META_CLUSTER_SECRET,
    NODE_ID_MAX,
    Node,
)
from changeagent.node.settings_entry import ENTRY_TYPE_ADDRESS, encode_address, encode_settings
from changeagent.raft import (
    ENTRY_TYPE_CONFIG,
    ENTRY_TYPE_MEMBERSHIP,
    ConfChange,
    ConfChangeKind,
    Entry,
    HardState,
    Membership,
    MembershipChangeRejected,
    NotLeader,
    Snapshot,
)
from changeagent.storage import WriteBatch
from changeagent.transport import (
    PeerUnavailable,
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

log = logging.getLogger(__name__)

SECRET_BYTES = 32
DESCRIBE_TIMEOUT_S = 5.0
ADDRESS_CHARS_MAX = 300


class ClusterMembers:
    """Membership operations of one node, and its answers to peer requests."""

    def __init__(self, node: Node, advertised_port: int = 0) -> None:
        self.node = node
        self.advertised_port = advertised_port  # the port members reach us on
        self._changing = asyncio.Lock()
        node.set_leave_handler(self._leave)

    # What GET /cluster shows --------------------------------------------------------

    def members(self) -> dict[int, str]:
        node = self.node
        if node.cluster_id == 0:
            return {}
        membership = node.membership
        ids = sorted(membership.voters | membership.learners)
        return {member: node.address_of(member) or "" for member in ids}

    def roles(self) -> dict[int, str]:
        if self.node.cluster_id == 0:
            return {}
        membership = self.node.membership
        roles = {member: "voter" for member in membership.voters}
        roles.update({member: "learner" for member in membership.learners})
        return roles

    # Adding -------------------------------------------------------------------------------

    async def add(self, address: str) -> None:
        """POST /cluster/members: create the cluster, or add the node at `address`."""
        address = _check_address(address)
        node = self.node
        if node.cluster_id == 0:
            await self._create(address)
        elif not node.is_leader:
            await node.call_leader("add_member", {"address": address})
        else:
            await self._add_on_leader(address)

    async def _create(self, address: str) -> None:
        node = self.node
        if not _is_own_address(address, self.advertised_port):
            raise BadRequest(
                f"this node is standalone: the first address must be its own "
                f"(host:{self.advertised_port} on this machine), not {address}"
            )
        async with self._exclusive():
            cluster_id = secrets.randbelow(NODE_ID_MAX) + 1
            secret = secrets.token_bytes(SECRET_BYTES)
            await node.storage.write(
                WriteBatch(
                    meta={META_CLUSTER_ID: str(cluster_id).encode(), META_CLUSTER_SECRET: secret}
                )
            )
            node.cluster_id, node.secret = cluster_id, secret
            if node.transport is not None:
                node.transport.set_cluster(cluster_id, secret)
            # One replicated configuration from here on, and our address for joiners.
            await node.propose_internal(ENTRY_TYPE_CONFIG, encode_settings(node.settings))
            await node.propose_internal(ENTRY_TYPE_ADDRESS, encode_address(node.node_id, address))
            log.warning(
                "created cluster %d with this node (%d) at %s", cluster_id, node.node_id, address
            )

    async def _add_on_leader(self, address: str) -> None:
        node = self.node
        transport = node.transport
        if transport is None:
            raise NotAvailable("this node has no peer transport")
        async with self._exclusive():
            node_id, cluster_id, info = await _describe(transport, address)
            membership = node.membership
            if node_id in membership.voters or node_id in membership.learners:
                if node.address_of(node_id) == address:
                    await self._wait_promoted(node_id)
                    return
                raise BadRequest(
                    f"node {node_id} is already a member, at {node.address_of(node_id)}"
                )
            if cluster_id not in (0, node.cluster_id):
                raise BadRequest(f"the node at {address} belongs to another cluster")
            if isinstance(info, dict) and info.get("has_changes"):
                raise BadRequest(
                    f"the node at {address} already holds changes; only empty nodes join"
                )
            base = node.storage.snapshot()
            voters: list[RpcValue] = list(sorted(base.membership.voters) if base.index == 0 else [])
            learners: list[RpcValue] = list(
                sorted(base.membership.learners) if base.index == 0 else []
            )
            payload: dict[str, RpcValue] = {
                "cluster_id": node.cluster_id,
                "secret": node.secret,
                "members": {str(k): v for k, v in self.members().items() if v},
                "voters": voters,
                "learners": learners,
            }
            try:
                await transport.call_address(address, "join", payload, timeout_s=DESCRIBE_TIMEOUT_S)
            except (PeerUnavailable, RequestFailed) as error:
                raise BadRequest(f"the node at {address} refused to join: {error}") from None
            node.pending_addresses[node_id] = address
            await self._propose(ConfChange(ConfChangeKind.ADD_LEARNER, node_id, address.encode()))
            log.warning("added node %d at %s as a learner", node_id, address)
            await self._wait_promoted(node_id)

    async def _wait_promoted(self, node_id: int) -> None:
        """Until the learner is a voter (the leader promotes it once caught up)."""
        node = self.node
        timeout_s = node.limits.commit_timeout_s * 4
        try:
            async with asyncio.timeout(timeout_s):
                while node_id not in node.membership.voters:
                    await node.wait_applied(node.commit_index + 1, timeout_s)
        except (TimeoutError, NodeError):
            if node_id in node.membership.learners:
                raise NotAvailable(
                    f"node {node_id} was added as a learner and is still catching up; "
                    "it becomes a voter as soon as it has caught up",
                    retry_after_s=5,
                ) from None
            raise

    # Removing -----------------------------------------------------------------------------

    async def remove(self, node_id: int) -> None:
        """DELETE /cluster/members/{id}; the removed node becomes standalone."""
        node = self.node
        if node_id not in self.members():
            raise NotFound(f"node {node_id} is not a member of this cluster")
        if node.membership.voters | node.membership.learners == {node.node_id}:
            async with self._exclusive():
                await self._leave_alone()
            return
        if not node.is_leader:
            await node.call_leader("remove_member", {"id": node_id})
            return
        async with self._exclusive():
            await self._propose(ConfChange(ConfChangeKind.REMOVE, node_id))
            log.warning("removed node %d", node_id)

    async def _leave(self) -> None:
        """We applied our own removal: keep the data, become a one-member cluster.

        Also run at start by a node that applied its removal and stopped before
        this finished (its replicated state says it must still leave)."""
        node = self.node
        driver = node.core_driver
        await driver.stop()
        applied = node.commit_index
        term = node.storage.hard_state().term + 1
        reset = Entry(
            applied + 1,
            term,
            ENTRY_TYPE_MEMBERSHIP,
            ConfChange(ConfChangeKind.RESET, node.node_id).encode(),
        )
        await node.storage.write(
            WriteBatch(
                entries=[reset],
                hard_state=HardState(term, node.node_id, applied + 1),
                meta={META_CLUSTER_ID: b"0", META_CLUSTER_SECRET: b""},
            )
        )
        node.replicated.apply(reset)  # the node has left: nothing more to do on restart
        self._forget_cluster()
        await node.restart_driver(applied=applied + 1)
        node.core_driver.campaign()
        log.warning("this node left its cluster and is standalone now")

    async def _leave_alone(self) -> None:
        """The only member removes itself: just forget the cluster id and secret."""
        await self.node.storage.write(
            WriteBatch(meta={META_CLUSTER_ID: b"0", META_CLUSTER_SECRET: b""})
        )
        self._forget_cluster()

    def _forget_cluster(self) -> None:
        node = self.node
        node.cluster_id, node.secret = 0, b""
        node.pending_addresses.clear()
        if node.transport is not None:
            node.transport.set_cluster(0, b"")

    # Joining (on the new node) ------------------------------------------------------------

    async def _join(self, payload: Any) -> RpcValue:
        node = self.node
        try:
            cluster_id = int(payload["cluster_id"])
            secret = bytes(payload["secret"])
            members = {int(k): str(v) for k, v in dict(payload["members"]).items()}
            base = Membership(
                voters=frozenset(int(v) for v in payload["voters"]),
                learners=frozenset(int(v) for v in payload["learners"]),
            )
        except (KeyError, TypeError, ValueError):
            raise RequestFailed("bad_request", "malformed join request") from None
        if node.cluster_id not in (0, cluster_id):
            raise RequestFailed("bad_request", "this node belongs to another cluster")
        if node.storage.first_user_index() != 0:
            raise RequestFailed("bad_request", "this node holds changes; only empty nodes join")
        if node.node_id in node.membership.voters | node.membership.learners and node.cluster_id:
            raise RequestFailed("bad_request", "this node is already a member")
        async with self._exclusive():
            await node.core_driver.stop()
            await node.storage.write(
                WriteBatch(
                    discard_log=True,
                    snapshot=Snapshot(membership=base),
                    hard_state=HardState(),
                    meta={META_CLUSTER_ID: str(cluster_id).encode(), META_CLUSTER_SECRET: secret},
                )
            )
            node.cluster_id, node.secret = cluster_id, secret
            node.pending_addresses.update(members)
            if node.transport is not None:
                node.transport.set_cluster(cluster_id, secret)
            await node.restart_driver(applied=0)
        log.warning("joined cluster %d; waiting for the leader to add this node", cluster_id)
        return {"node_id": node.node_id}

    def _describe(self) -> RpcValue:
        node = self.node
        membership = node.membership
        return {
            "node_id": node.node_id,
            "cluster_id": node.cluster_id,
            "has_changes": node.storage.first_user_index() != 0,
            "member": node.node_id in membership.voters | membership.learners,
        }

    # Requests from peers ------------------------------------------------------------------

    async def on_request(self, context: RequestContext, request: Request) -> Reply:
        """Answer a forwarded write, read index or RPC (see transport's `on_request`)."""
        if isinstance(request, RpcRequest) and request.method in ("describe", "join"):
            payload = (
                self._describe()
                if request.method == "describe"
                else await self._join(request.payload)
            )
            return RpcResponse(0, payload)
        if not context.member:
            raise RequestFailed("bad_request", "only members may send this request")
        try:
            if isinstance(request, Proposal):
                entry = await self.node.propose_change(parse_change_body(request.data), request.key)
                return ProposalReply(0, index=entry.index)
            if isinstance(request, ReadIndexRequest):
                return ReadIndexReply(
                    0,
                    index=await self.node.core_driver.read_index(self.node.limits.commit_timeout_s),
                )
            return RpcResponse(0, await self._rpc(request.method, request.payload))
        except NodeError as error:
            raise RequestFailed(error.code, str(error)) from None
        except ValueError as error:  # a malformed forwarded change
            raise RequestFailed("bad_request", str(error)) from None
        except RequestFailed:
            raise
        except Exception as error:  # our bug answering a well-formed request
            self.node.fail(f"answering a request from node {context.peer_id}", error)
            raise RequestFailed("internal", "the request failed on the receiver") from None

    async def _rpc(self, method: str, payload: Any) -> RpcValue:
        node = self.node
        if not node.is_leader:
            raise NotAvailable("this node is not the leader any more", retry_after_s=1)
        if method == "add_member":
            await self.add(str(payload["address"]))
            return None
        if method == "remove_member":
            await self.remove(int(payload["id"]))
            return None
        if method == "put_config":
            entry = await node.propose_internal(ENTRY_TYPE_CONFIG, str(payload).encode())
            return entry.index
        raise RequestFailed("unknown_method", f"unknown method {method!r}")

    # Helpers ------------------------------------------------------------------------------

    def _exclusive(self) -> asyncio.Lock:
        if self._changing.locked():
            raise Conflict("another membership change is in progress; retry when it is done")
        return self._changing

    async def _propose(self, change: ConfChange) -> None:
        node = self.node
        try:
            future = node.core_driver.propose_membership(change)
        except MembershipChangeRejected as error:
            if error.busy:
                raise Conflict(f"membership change refused: {error}") from None
            raise BadRequest(f"membership change refused: {error}") from None
        except NotLeader:
            raise NotAvailable("leadership changed; retry", retry_after_s=1) from None
        await node._await_commit(future)


async def _describe(transport: Any, address: str) -> tuple[int, int, Any]:
    try:
        result: tuple[int, int, Any] = await transport.call_address(
            address, "describe", None, timeout_s=DESCRIBE_TIMEOUT_S
        )
    except PeerUnavailable as error:
        raise BadRequest(
            f"cannot reach a changeagent node of this cluster (or a standalone one) at "
            f"{address}: {error}"
        ) from None
    except RequestFailed as error:
        raise BadRequest(f"the node at {address} did not describe itself: {error}") from None
    return result


def _check_address(address: str) -> str:
    address = address.strip()
    host, separator, port = address.rpartition(":")
    if (
        not separator
        or not host
        or len(address) > ADDRESS_CHARS_MAX
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        raise BadRequest(f"address must be host:port, not {address[:ADDRESS_CHARS_MAX]!r}")
    return address


def _is_own_address(address: str, port: int) -> bool:
    """Whether `address` names this machine (a local IP) and our advertised port."""
    host, _, port_text = address.rpartition(":")
    if port and int(port_text) != port:
        return False
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((sockaddr[0], 0))  # only a local address can be bound
            except OSError:
                continue
            return True
    return False
