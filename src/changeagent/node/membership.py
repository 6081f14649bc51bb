"""Cluster membership through the API: create, add, remove, join, leave, promote,
demote.

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
   progress shows it streaming (`_promote_loop`); the POST answers then.
   With role=learner the entry says so too: a read-only member, which
   replicates, serves reads and forwards writes but never votes, and which
   the leader never promotes (the POST answers once the addition commits).

PUT /cluster/members/{id} with role=voter or role=learner promotes or demotes
a member (DEMOTE in the core; the leader may demote itself: it hands over once
the change commits). Which learners stay learners is replicated state
(`ReplicatedState.kept_learners`), so every node and any later leader agrees.

DELETE /cluster/members/{id} proposes the removal; the removed node, once it
applies its own removal (or at its next start, if it stopped first), writes a
RESET membership entry into its own log and becomes a standalone one-member
cluster with its data. One membership change at a time: 409 while one is in
progress. The cluster identity changes only in `set_cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import socket
from typing import TYPE_CHECKING, Any

from changeagent.config import SECOND_NS
from changeagent.ids import format_id
from changeagent.node.errors import BadRequest, Conflict, NodeError, NotAvailable, NotFound
from changeagent.node.identity import NODE_ID_MAX, ClusterIdentity, cluster_meta
from changeagent.node.replica import Replica
from changeagent.node.settings_entry import (
    ENTRY_TYPE_ADDRESS,
    encode_address,
    encode_member_context,
    encode_settings,
)
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
    ProgressState,
    Snapshot,
)
from changeagent.raft.quorum import quorum_size
from changeagent.storage import WriteBatch
from changeagent.transport import PeerUnavailable, RequestFailed

if TYPE_CHECKING:
    from changeagent.node.seeding import SeedSender
    from changeagent.storage.seed import SeedInfo
    from changeagent.transport import RpcValue, Transport

log = logging.getLogger(__name__)

SECRET_BYTES = 32
DESCRIBE_TIMEOUT_S = 5.0
ADDRESS_CHARS_MAX = 300
ROLES = ("voter", "learner")


class ClusterMembership:
    """Membership operations of one node (see the module docstring)."""

    def __init__(
        self, replica: Replica, identity: ClusterIdentity, seeder: SeedSender | None = None
    ) -> None:
        self._replica = replica
        self.identity = identity
        self.advertised_port = 0  # the port members reach us on, once listening
        self._changing = asyncio.Lock()
        self._seeder = seeder  # sends the log to a joining node as a file
        replica.set_leave_handler(self.leave)

    def start(self) -> None:
        self._replica.supervisor.spawn(self._promote_loop(), "promote")

    def advertise(self, port: int) -> None:
        """The port members reach this node on (API or cluster port), once listening:
        the first address POSTed to a standalone node must name it."""
        self.advertised_port = port

    # What GET /cluster shows ----------------------------------------------------------

    def members(self) -> dict[int, str]:
        if self.identity.standalone:
            return {}
        membership = self._replica.membership
        ids = sorted(membership.voters | membership.learners)
        return {member: self._replica.address_of(member) or "" for member in ids}

    def roles(self) -> dict[int, str]:
        """Each member's role now: voter or learner (read-only, or still joining)."""
        if self.identity.standalone:
            return {}
        membership = self._replica.membership
        roles = {member: "voter" for member in membership.voters}
        roles.update({member: "learner" for member in membership.learners})
        return roles

    def kept_learners(self) -> frozenset[int]:
        """The read-only members: learners that stay learners (as far as this node
        has applied; a joining learner is not among them and becomes a voter)."""
        if self.identity.standalone:
            return frozenset()
        return frozenset(self._replica.replicated.kept_learners)

    def quorum_size(self) -> int:
        """How many voters make a majority now (0 for a standalone node)."""
        if self.identity.standalone:
            return 0
        return quorum_size(len(self._replica.membership.voters))

    # The cluster identity ---------------------------------------------------------------

    async def set_cluster(self, cluster_id: int, secret: bytes, batch: WriteBatch) -> None:
        """Persist the identity with `batch` (one transaction), adopt it, and tell
        the transport (links of the old identity close)."""
        meta = {**batch.meta, **cluster_meta(cluster_id, secret)}
        await self._replica.storage.write(dataclasses.replace(batch, meta=meta))
        self.identity.adopt(cluster_id, secret)
        transport = self._replica.transport
        if transport is not None:
            transport.set_cluster(cluster_id, secret)

    # Adding -------------------------------------------------------------------------------

    async def add(self, address: str, role: str = "voter") -> None:
        """POST /cluster/members: create the cluster, or add the node at `address`
        as a voter (a learner until it has caught up) or a read-only learner."""
        address = _check_address(address)
        keep_learner = _check_role(role) == "learner"
        replica = self._replica
        if self.identity.standalone:
            if keep_learner:
                raise BadRequest(
                    "this node is standalone: the first member founds the cluster and "
                    "is its voter; add read-only members (role=learner) after it"
                )
            await self._create(address)
        elif not replica.is_leader:
            payload: dict[str, RpcValue] = {"address": address, "role": role}
            await replica.leader.call("add_member", payload, self._call_timeout_s)
        else:
            await self._add_on_leader(address, keep_learner)

    async def _create(self, address: str) -> None:
        replica = self._replica
        if not _is_own_address(address, self.advertised_port):
            raise BadRequest(
                f"this node is standalone: the first address must be its own "
                f"(host:{self.advertised_port} on this machine), not {address}"
            )
        async with self._exclusive():
            cluster_id = secrets.randbelow(NODE_ID_MAX) + 1
            await self.set_cluster(cluster_id, secrets.token_bytes(SECRET_BYTES), WriteBatch())
            # One replicated configuration from here on, and our address for joiners.
            await replica.propose_internal(ENTRY_TYPE_CONFIG, encode_settings(replica.settings))
            own = encode_address(replica.node_id, address)
            await replica.propose_internal(ENTRY_TYPE_ADDRESS, own)
            log.info(
                "created cluster %s with this node (%s) at %s",
                format_id(cluster_id),
                format_id(replica.node_id),
                address,
            )

    async def _add_on_leader(self, address: str, keep_learner: bool) -> None:
        replica = self._replica
        transport = replica.transport
        if transport is None:
            raise NotAvailable("this node has no peer transport")
        async with self._exclusive():
            node_id, cluster_id, info = await _describe(transport, address)
            membership = replica.membership
            if node_id in membership.voters or node_id in membership.learners:
                if replica.address_of(node_id) != address:
                    raise BadRequest(
                        f"node {format_id(node_id)} is already a member, "
                        f"at {replica.address_of(node_id)}"
                    )
                self._check_same_role(node_id, keep_learner)
                if not keep_learner:
                    await self._wait_promoted(node_id)
                return
            if cluster_id not in (0, self.identity.cluster_id):
                raise BadRequest(f"the node at {address} belongs to another cluster")
            if isinstance(info, dict) and info.get("has_changes"):
                raise BadRequest(
                    f"the node at {address} already holds changes; only empty nodes join"
                )
            try:
                payload = self._join_payload()
                await transport.call_address(address, "join", payload, timeout_s=DESCRIBE_TIMEOUT_S)
            except (PeerUnavailable, RequestFailed) as error:
                raise BadRequest(f"the node at {address} refused to join: {error}") from None
            if self._seeder is not None:
                await self._seeder.send(transport, address)
            replica.expect_address(node_id, address)
            context = encode_member_context(address, keep_learner=keep_learner)
            await self._propose(ConfChange(ConfChangeKind.ADD_LEARNER, node_id, context))
            if keep_learner:
                log.info("added node %s at %s as a read-only learner", format_id(node_id), address)
                return
            log.info("added node %s at %s as a learner", format_id(node_id), address)
            await self._wait_promoted(node_id)

    def _check_same_role(self, node_id: int, keep_learner: bool) -> None:
        """Adding a member again is answered as done only with the role it has."""
        kept = node_id in self._replica.replicated.kept_learners
        if keep_learner and not kept:
            raise Conflict(
                f"node {format_id(node_id)} is already a member that votes (or is joining "
                f"to vote); PUT /cluster/members/{format_id(node_id)} with role=learner "
                "demotes it"
            )
        if not keep_learner and kept:
            raise Conflict(
                f"node {format_id(node_id)} is already a read-only learner; "
                f"PUT /cluster/members/{format_id(node_id)} with role=voter promotes it"
            )

    def _join_payload(self) -> dict[str, RpcValue]:
        base = self._replica.storage.snapshot()
        # A snapshot at index 0 cannot be sent by Raft: the joiner gets the base membership.
        never_compacted = base.index == 0
        voters: list[RpcValue] = [*sorted(base.membership.voters)] if never_compacted else []
        learners: list[RpcValue] = [*sorted(base.membership.learners)] if never_compacted else []
        return {
            "cluster_id": self.identity.cluster_id,
            "secret": self.identity.secret,
            "members": {str(k): v for k, v in self.members().items() if v},
            "voters": voters,
            "learners": learners,
        }

    async def _wait_promoted(self, node_id: int) -> None:
        """Until the learner is a voter (the leader promotes it once caught up)."""
        replica = self._replica
        timeout_s = self._call_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                while node_id not in replica.membership.voters:
                    await replica.wait_applied(replica.applied.index + 1, timeout_s)
        except (TimeoutError, NodeError):
            if node_id in replica.membership.learners:
                raise NotAvailable(
                    f"node {format_id(node_id)} was added as a learner and is still catching "
                    "up; it becomes a voter as soon as it has caught up",
                    retry_after_s=5,
                ) from None
            raise

    async def _promote_loop(self) -> None:
        """The leader promotes every learner that has caught up (streaming the log)."""
        replica = self._replica
        while True:
            await asyncio.sleep(replica.settings.heartbeat_timeout_ns / SECOND_NS)
            if replica.is_leader and not replica.failure and not replica.closing:
                self._promote_caught_up()

    def _promote_caught_up(self) -> None:
        replica = self._replica
        driver = replica.core_driver
        core = driver.core
        if replica.applied.index < core.membership_index:
            # Roles change when entries apply: until every membership change in the
            # log has applied here, a learner just added or demoted to stay a
            # learner may not show as kept yet.
            return
        for learner in replica.replicated.learners_to_promote(core.membership.learners):
            progress = core.progress.get(learner)
            if progress is None or progress.state.value != "replicate":
                continue
            with contextlib.suppress(MembershipChangeRejected, NotLeader, NotAvailable):
                driver.propose_membership(ConfChange(ConfChangeKind.PROMOTE, learner))
                log.info("promoting learner %s to voter", format_id(learner))

    # Changing a member's role --------------------------------------------------------------

    async def set_role(self, node_id: int, role: str) -> None:
        """PUT /cluster/members/{id} with role=voter (promote) or role=learner (demote:
        the member stays a read-only learner). Done already: nothing to do."""
        role = _check_role(role)
        replica = self._replica
        if node_id not in self.members():
            raise NotFound(f"node {format_id(node_id)} is not a member of this cluster")
        if not replica.is_leader:
            payload: dict[str, RpcValue] = {"id": node_id, "role": role}
            await replica.leader.call("set_role", payload, self._call_timeout_s)
            return
        async with self._exclusive():
            change = self._role_change(node_id, role)
            if change is None:
                return
            await self._propose(change, refusal=Conflict)
            verb = "promoted" if change.kind is ConfChangeKind.PROMOTE else "demoted"
            log.info("%s node %s to %s", verb, format_id(node_id), role)

    def _role_change(self, node_id: int, role: str) -> ConfChange | None:
        """The change that gives `node_id` the `role`, or None if it has it already."""
        membership = self._replica.membership
        kept = node_id in self._replica.replicated.kept_learners
        if role == "voter":
            if node_id in membership.voters:
                return None
            progress = self._replica.core_driver.core.progress.get(node_id)
            if progress is None or progress.state is not ProgressState.REPLICATE:
                raise Conflict(
                    f"learner {format_id(node_id)} has not caught up yet; retry once it has"
                )
            return ConfChange(ConfChangeKind.PROMOTE, node_id)
        if node_id in membership.learners:
            if kept:
                return None
            raise Conflict(
                f"node {format_id(node_id)} is still joining and becomes a voter once it "
                "has caught up; demote it after that"
            )
        if membership.voters == {node_id}:
            raise Conflict(
                f"node {format_id(node_id)} is the last voter: demoting it would leave "
                "no voter, so no quorum"
            )
        return ConfChange(ConfChangeKind.DEMOTE, node_id)

    # Removing -----------------------------------------------------------------------------

    async def remove(self, node_id: int) -> None:
        """DELETE /cluster/members/{id}; the removed node becomes standalone."""
        replica = self._replica
        if node_id not in self.members():
            raise NotFound(f"node {format_id(node_id)} is not a member of this cluster")
        if replica.membership.voters | replica.membership.learners == {replica.node_id}:
            async with self._exclusive():
                # The only member removes itself: it just forgets the cluster.
                await self.set_cluster(0, b"", WriteBatch())
                replica.forget_pending_addresses()
            return
        if not replica.is_leader:
            await replica.leader.call("remove_member", {"id": node_id}, self._call_timeout_s)
            return
        async with self._exclusive():
            await self._propose(ConfChange(ConfChangeKind.REMOVE, node_id))
            log.info("removed node %s", format_id(node_id))

    async def leave(self) -> None:
        """We applied our own removal: keep the data, become a one-member cluster.

        Also run at start by a node that applied its removal and stopped before
        this finished (its replicated state says it must still leave)."""
        replica = self._replica
        await replica.core_driver.stop()
        applied = replica.applied.index
        term = replica.storage.hard_state().term + 1
        reset = Entry(
            applied + 1,
            term,
            ENTRY_TYPE_MEMBERSHIP,
            ConfChange(ConfChangeKind.RESET, replica.node_id).encode(),
        )
        hard_state = HardState(term, replica.node_id, applied + 1)
        await self.set_cluster(0, b"", WriteBatch(entries=[reset], hard_state=hard_state))
        replica.replicated.apply(reset)  # the node has left: nothing more to do on restart
        replica.forget_pending_addresses()
        await replica.restart_driver(applied=applied + 1)
        replica.core_driver.campaign()
        log.info("this node left its cluster and is standalone now")

    # Joining (on the new node) ------------------------------------------------------------

    async def join(self, payload: Any) -> RpcValue:
        """The `join` RPC: discard our own (empty) history and take the cluster's identity."""
        replica = self._replica
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
        if self.identity.cluster_id not in (0, cluster_id):
            raise RequestFailed("bad_request", "this node belongs to another cluster")
        if self._holds_own_changes():
            raise RequestFailed("bad_request", "this node holds changes; only empty nodes join")
        if self._is_member() and not self.identity.standalone:
            raise RequestFailed("bad_request", "this node is already a member")
        async with self._exclusive():
            await replica.core_driver.stop()
            fresh = WriteBatch(
                discard_log=True, snapshot=Snapshot(membership=base), hard_state=HardState()
            )
            await self.set_cluster(cluster_id, secret, fresh)
            replica.reset_replicated_state(base)
            for node_id, address in members.items():
                replica.expect_address(node_id, address)
            await replica.restart_driver(applied=0)
        log.info("joined cluster %s; waiting to be added", format_id(cluster_id))
        return {"node_id": replica.node_id}

    def _holds_own_changes(self) -> bool:
        """Changes this node did not get as a seed of the cluster it joined (a node
        that joined and is no member yet holds none of its own: `join` discarded them)."""
        if self._replica.storage.first_user_index() == 0:
            return False
        return self.identity.standalone or self._is_member()

    def _is_member(self) -> bool:
        """This node is in the membership its log holds."""
        membership = self._replica.membership
        return self._replica.node_id in membership.voters | membership.learners

    def check_seedable(self) -> None:
        """A seed is taken only after the join RPC, before this node is added."""
        if self.identity.standalone:
            raise Conflict("this node has not joined a cluster: no seed before the join")
        if self._is_member():
            raise Conflict("this node is a member already; its log comes by replication")
        if self._holds_own_changes():
            raise Conflict("this node holds changes of its own")

    async def adopt_seed(self, seed: SeedInfo) -> None:
        """Install a checked seed (`seeding.py`) as this joined node's log."""
        async with self._exclusive():
            self.check_seedable()
            await self._replica.adopt_seed(seed)
        log.info(
            "took a seed of the cluster's log up to index %d (%d entries)",
            seed.last_index,
            seed.entries,
        )

    def describe(self) -> RpcValue:
        """The `describe` RPC: who we are, for a leader about to add us."""
        return {
            "node_id": self._replica.node_id,
            "cluster_id": self.identity.cluster_id,
            "has_changes": self._holds_own_changes(),
            "member": self._is_member(),
        }

    # Helpers ------------------------------------------------------------------------------

    @property
    def _call_timeout_s(self) -> float:
        return self._replica.limits.commit_timeout_s * 4

    def _exclusive(self) -> asyncio.Lock:
        if self._changing.locked():
            raise Conflict("another membership change is in progress; retry when it is done")
        return self._changing

    async def _propose(
        self, change: ConfChange, refusal: type[BadRequest | Conflict] = BadRequest
    ) -> None:
        """Propose `change` and wait for it to apply here. The core's refusal is
        409 when it may succeed later (busy), otherwise `refusal`."""
        replica = self._replica
        try:
            future = replica.core_driver.propose_membership(change)
        except MembershipChangeRejected as error:
            if error.busy:
                raise Conflict(f"membership change refused: {error}") from None
            raise refusal(f"membership change refused: {error}") from None
        except NotLeader:
            raise NotAvailable("leadership changed; retry", retry_after_s=1) from None
        await replica.await_commit(future)


async def _describe(transport: Transport, address: str) -> tuple[int, int, Any]:
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


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise BadRequest(f"role must be voter or learner, not {role[:40]!r}")
    return role


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
