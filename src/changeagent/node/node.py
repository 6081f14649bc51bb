"""The node: the change log, its replicated settings, its long-polls and its peers.

Every node runs the Raft core through a `RaftDriver`; a standalone node is a
one-member cluster (cluster id 0) on the same code path. A fresh node
bootstraps with the membership {itself} at index 0 and campaigns at once, so
its no-op is entry 1 and the first change is `_id` 2, as in ChangeAgent; every
restart of a lone voter begins a new term with another no-op.

Writes: on the leader, a change is proposed to the core (after web hooks
accept it) and answered once committed and applied. On a follower it is
forwarded to the leader over the peer transport, and answered once this node
has applied that index too. Reads serve this node's applied prefix; a
linearizable read first asks the leader for a read index (§6.4).

Everything here runs on one asyncio loop; disk work happens in storage's writer
thread (writes) or a worker thread (cold reads), never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from changeagent.change import NewChange, encode_change, stored_bytes_max
from changeagent.config import SECOND_NS, Settings, write_settings_file
from changeagent.node.driver import DriverHooks, RaftDriver
from changeagent.node.errors import (
    CommitTimeout,
    DataCorrupted,
    NodeError,
    NotAvailable,
    PayloadTooLarge,
    error_from_code,
)
from changeagent.node.limits import NodeLimits as NodeLimits  # re-exported
from changeagent.node.query import ChangeQuery, KnownPrefix, PageResult
from changeagent.node.ready_plan import plan_compaction
from changeagent.node.replicated_state import (
    AddressChanged,
    Effect,
    MemberRemoved,
    PurgeCommitted,
    ReplicatedState,
    SettingsChanged,
)
from changeagent.node.settings_entry import encode_purge, encode_settings
from changeagent.node.supervisor import Supervisor
from changeagent.node.waiters import CommitWaiters
from changeagent.node.webhooks import WebHookCaller
from changeagent.raft import (
    ENTRY_TYPE_CONFIG,
    ENTRY_TYPE_PURGE,
    ConfChange,
    ConfChangeKind,
    Entry,
    Membership,
    MembershipChangeRejected,
    Message,
    NotLeader,
    ProposalDropped,
    Role,
    Snapshot,
)
from changeagent.storage import (
    ChangePage,
    CorruptionError,
    KnownAtStart,
    Storage,
    StorageFailed,
    WriteBatch,
)
from changeagent.transport import RequestFailed

if TYPE_CHECKING:
    from changeagent.transport import RpcValue, Transport

log = logging.getLogger(__name__)
T = TypeVar("T")

META_NODE_ID = "node_id"
META_CLUSTER_ID = "cluster_id"
META_CLUSTER_SECRET = "cluster_secret"
NODE_ID_MAX = 2**63 - 1


class Node:
    """One changeagent node. Create it, `attach_transport` (clusters), `start`."""

    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        settings_path: Path | None,
        limits: NodeLimits,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        self.storage = storage
        self.settings_path = settings_path
        self.limits = limits
        self._clock_ns = clock_ns
        self._rng = rng or random.Random()
        self.node_id = _load_node_id(storage)
        self.replicated = ReplicatedState(self.node_id, settings)
        self.cluster_id = int(storage.meta_get(META_CLUSTER_ID) or b"0")
        self.secret = storage.meta_get(META_CLUSTER_SECRET) or b""
        self._removed_peers: set[int] = set()  # their removal applied: no link to them
        self.pending_addresses: dict[int, str] = {}  # known before their entry applies
        self.transport: Transport | None = None
        self.driver: RaftDriver | None = None
        self.commit_index = 0  # applied here: what reads see
        self._last_timestamp_ns = 0
        # Idempotency keys claimed on this leader: the first request with a key
        # claims it before any await; retries wait (bounded) for its outcome.
        self._claims: dict[str, asyncio.Future[Entry]] = {}
        self._purge_to = 0  # a purge applied, compacted after the core advances
        self._closed = False
        self._apply_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._apply_waiter_ids = itertools.count()
        self._supervisor = Supervisor(self._fail)
        self._waiters = CommitWaiters(
            self._probe_in_memory, self._read_in_memory, self._read_committed
        )
        self._web_hooks = WebHookCaller()
        self._on_leave: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._leader_changed: asyncio.Future[None] | None = None  # set on any soft-state change
        self.failure: str | None = None
        self.closing = False
        self.purge_checks = 0  # how many times the purge rule was evaluated (diagnostics)

    # State -----------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.replicated.settings

    @property
    def addresses(self) -> dict[int, str]:
        """Replicated: member id -> host:port."""
        return self.replicated.addresses

    @property
    def core_driver(self) -> RaftDriver:
        assert self.driver is not None, "start() the node first"
        return self.driver

    @property
    def role(self) -> Role:
        return self.core_driver.core.role

    @property
    def is_leader(self) -> bool:
        return self.driver is not None and self.driver.core.role is Role.LEADER

    @property
    def leader_id(self) -> int:
        return (self.driver.core.leader_id or 0) if self.driver is not None else 0

    @property
    def term(self) -> int:
        return self.core_driver.core.term

    @property
    def applied_index(self) -> int:
        return self.commit_index

    @property
    def membership(self) -> Membership:
        return self.core_driver.core.membership

    @property
    def state(self) -> str:
        """ChangeAgent's state names, plus Learner."""
        if self.closing:
            return "Stopping"
        if self.cluster_id == 0:
            return "Standalone"
        role = self.role
        if role is Role.LEADER:
            return "Leader"
        if role is Role.CANDIDATE or role is Role.PRE_CANDIDATE:
            return "Candidate"
        if self.node_id in self.membership.learners:
            return "Learner"
        return "Follower"

    @property
    def long_poll_count(self) -> int:
        return len(self._waiters)

    def address_of(self, node_id: int) -> str | None:
        return self.addresses.get(node_id) or self.pending_addresses.get(node_id)

    # Lifecycle -------------------------------------------------------------------------

    def attach_transport(self, transport: Transport) -> None:
        self.transport = transport

    async def start(self) -> None:
        """Recover the replicated state, start Raft; a lone voter leads before this returns."""
        meta = {META_NODE_ID: str(self.node_id).encode()}
        bootstrap = None
        if self._is_fresh():
            bootstrap = Snapshot(membership=Membership(voters=frozenset({self.node_id})))
        await self.storage.write(WriteBatch(meta=meta, snapshot=bootstrap))
        self.replicated, commit = await asyncio.to_thread(
            recover_replicated_state, self.storage, self.node_id, self.replicated.settings
        )
        self._start_driver(applied=commit)
        if self.replicated.purge_index > self.storage.snapshot().index:
            # Committed before a crash, not compacted yet.
            self._purge_to = self.replicated.purge_index
            await self._purge_applied()
        if self.replicated.must_leave and self._on_leave is not None:
            await self._on_leave()  # removed before a crash, left only now
        self._supervisor.spawn(self._purge_loop(), "purge")
        self._supervisor.spawn(self._promote_loop(), "promote")
        if self.membership.voters == {self.node_id}:
            self.core_driver.campaign()
            await self._wait_leading(self.limits.commit_timeout_s)

    def _is_fresh(self) -> bool:
        storage = self.storage
        return (
            self.cluster_id == 0
            and storage.last_index() == 0
            and not storage.snapshot().membership.voters
        )

    def _start_driver(self, applied: int) -> None:
        settings = self.settings
        tick_s, election_ticks = _ticks(settings)
        config = self.limits.raft_config(self.node_id, election_ticks, heartbeat_ticks=1)
        hooks = DriverHooks(
            send=self._send,
            apply=self._apply,
            install_snapshot=self._install_snapshot,
            on_role_change=self._on_role_change,
            after_advance=self._purge_applied,
        )
        self.driver = RaftDriver(
            self.storage,
            config,
            tick_s,
            hooks,
            applied=applied,
            pending_max=self.limits.pending_proposals_max,
            rng=self._rng,
        )
        self.commit_index = applied
        self.driver.start(self._supervisor.spawn)

    async def _wait_leading(self, timeout_s: float) -> None:
        """Until this node leads and has applied its term's no-op (writes then work)."""
        driver = self.core_driver
        async with asyncio.timeout(timeout_s):
            while not (
                driver.core.role is Role.LEADER and self.commit_index >= driver.core.last_index
            ):
                await self.wait_applied(self.commit_index + 1, timeout_s)

    async def restart_driver(self, applied: int) -> None:
        """Replace the Raft core after the log was reset (join) or re-bootstrapped (leave)."""
        if self.driver is not None:
            await self.driver.stop()
        self._start_driver(applied)

    async def begin_shutdown(self) -> None:
        """Refuse new writes, answer long-polls now, and hand leadership to the most
        up-to-date voter (rolling restarts without a write outage). Raft keeps
        running, so writes already in flight can still commit."""
        self.closing = True
        self._waiters.close()
        driver = self.driver
        if driver is None or driver.core.role is not Role.LEADER:
            return
        progress = driver.core.progress
        voters = [peer for peer in driver.core.membership.voters if peer in progress]
        if not voters:
            return
        target = max(voters, key=lambda peer: progress[peer].match)
        with contextlib.suppress(NotLeader, ProposalDropped, ValueError, TimeoutError):
            driver.transfer_leadership(target)
            # A caught-up target wins within a round trip or two; one that is
            # itself stopping never does, so do not wait longer than this.
            timeout_s = self.settings.election_timeout_ns / SECOND_NS
            async with asyncio.timeout(timeout_s):
                while driver.core.role is Role.LEADER:
                    await asyncio.sleep(driver.tick_s / 4)  # the transfer takes a few ticks
        log.warning(
            "leadership %s to node %d before shutting down",
            "handed" if driver.core.role is not Role.LEADER else "could not be handed",
            target,
        )

    async def close(self) -> None:
        """Answer long-polls now, stop Raft and background work (once)."""
        if self._closed:
            return
        self._closed = True
        if not self.closing:
            await self.begin_shutdown()
        if self.driver is not None:
            await self.driver.stop()
        await self._supervisor.stop()
        self._fail_apply_waiters()
        await self._web_hooks.close()

    # Writes ----------------------------------------------------------------------------

    async def append_change(self, change: NewChange, key: str = "") -> bytes:
        """Store a change durably; return its stored bytes. Retries with `key` get the original."""
        if key:
            existing = self._applied_for_key(key)
            if existing is not None:
                return existing
        self._check_writable()
        _check_fits(change, self.limits.entry_bytes_max)
        if self.is_leader:
            entry = await self.propose_change(change, key)
            return entry.data
        index = await self._forward_change(change, key)
        await self.wait_applied(index, self.limits.commit_timeout_s)
        return self._stored_answer(index)

    def _stored_answer(self, index: int) -> bytes:
        """The stored change at `index`, or `{"_id": index}` when a purge removed
        it in the meantime (the write still stands; never an empty body)."""
        stored = self.storage.get_change(index)
        return stored if stored is not None else orjson.dumps({"_id": index})

    async def propose_change(self, change: NewChange, key: str = "") -> Entry:
        """On the leader: run web hooks, propose, wait until committed and applied.

        A request with a key claims it before its first await, so a retry that
        arrives while the first attempt waits on web hooks or on the commit
        waits for that attempt (up to the commit timeout) instead of proposing
        the change a second time."""
        if not key:
            return await self._await_commit(await self._proposal(change, ""))
        claim = self._claims.get(key)
        if claim is not None:
            return await self._await_commit(claim)
        claim = asyncio.get_running_loop().create_future()
        self._claims[key] = claim
        claim.add_done_callback(lambda _: self._release_claim(key, claim))
        try:
            proposal = await self._claimed_proposal(change, key)
        except BaseException as error:
            _fail_future(claim, error)
            raise
        _chain(proposal, claim)  # a timed-out first attempt still settles the claim
        return await self._await_commit(proposal)

    def _release_claim(self, key: str, claim: asyncio.Future[Entry]) -> None:
        if self._claims.get(key) is claim:
            del self._claims[key]

    async def _claimed_proposal(self, change: NewChange, key: str) -> asyncio.Future[Entry]:
        """The proposal for a claimed key: the stored entry when the key is already
        in the log, else a new proposal."""
        stored = await self._committed_on_leader(key)
        if stored is None:
            return await self._proposal(change, key)
        done: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        done.set_result(Entry(stored, 0, change.type, self._stored_answer(stored), key))
        return done

    async def _proposal(self, change: NewChange, key: str) -> asyncio.Future[Entry]:
        _check_fits(change, self.limits.entry_bytes_max)
        await self._web_hooks.validate(self.settings.web_hooks, change)
        timestamp_ns = self._next_timestamp_ns()
        return self.core_driver.propose(
            change.type, lambda index: encode_change(index, timestamp_ns, change), key
        )

    async def propose_internal(self, entry_type: int, data: bytes) -> Entry:
        """On the leader: propose an internal entry (settings, purge, address)."""
        self._check_writable()
        return await self._await_commit(self.core_driver.propose(entry_type, lambda _: data))

    async def _await_commit(self, future: asyncio.Future[Entry]) -> Entry:
        try:
            async with asyncio.timeout(self.limits.commit_timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            raise CommitTimeout(
                "the change was not committed in time; it may still commit. "
                "Retry with the same Idempotency-Key to get it exactly once"
            ) from None

    async def _forward_change(self, change: NewChange, key: str) -> int:
        body = orjson.dumps(
            {"type": change.type, "tags": change.tags, "data": orjson.Fragment(change.data_json)}
        )
        leader, transport = self._leader_link()
        timeout_s = self.limits.commit_timeout_s
        return await self._while_leader(
            leader, transport.propose(leader, change.type, body, key, timeout_s=timeout_s)
        )

    async def _while_leader(self, leader: int, call: Coroutine[Any, Any, T]) -> T:
        """Await a request to `leader`, but give up as soon as this node sees
        another leader (or none): a leader that died or was deposed never answers,
        and waiting for the request's own timeout would stall the client."""
        request = asyncio.ensure_future(call)
        try:
            while not request.done():
                changed = self._leader_change()
                await asyncio.wait((request, changed), return_when=asyncio.FIRST_COMPLETED)
                if not request.done() and self.leader_id != leader:
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

    def _leader_change(self) -> asyncio.Future[None]:
        """A future resolved at the next change of role or leader."""
        if self._leader_changed is None or self._leader_changed.done():
            self._leader_changed = asyncio.get_running_loop().create_future()
        return self._leader_changed

    def _leader_link(self) -> tuple[int, Transport]:
        leader = self.leader_id
        if not leader or self.transport is None or self.cluster_id == 0:
            raise NotAvailable("no leader is known; retry later", retry_after_s=1)
        return leader, self.transport

    async def call_leader(self, method: str, payload: RpcValue) -> RpcValue:
        """Run an operation on the leader (membership, settings); its answer's payload."""
        leader, transport = self._leader_link()
        timeout_s = self.limits.commit_timeout_s * 4
        return await self._while_leader(
            leader, transport.call(leader, method, payload, timeout_s=timeout_s)
        )

    async def update_settings(self, settings: Settings) -> Settings:
        """Replicate new settings through the log; they apply on every node when committed."""
        data = encode_settings(settings.validate())
        if self.is_leader:
            await self.propose_internal(ENTRY_TYPE_CONFIG, data)
        else:
            answer = await self.call_leader("put_config", data.decode())
            if not isinstance(answer, int):
                raise NotAvailable("the leader gave no index for the new settings")
            index = answer
            await self.wait_applied(index, self.limits.commit_timeout_s)
        return self.settings

    def _applied_for_key(self, key: str) -> bytes | None:
        """The change stored under `key`, if it is committed and applied here.

        A key found on an entry this node holds but has not applied is no answer:
        that entry may never commit (a deposed leader's suffix), so acknowledging
        it could acknowledge a write that is then lost (the nemesis found this).
        Such retries go on to the leader, which knows.
        """
        stored_index = self.storage.idempotency_lookup(key)
        if stored_index is None or stored_index > self.commit_index:
            return None
        return self._stored_answer(stored_index)

    async def _committed_on_leader(self, key: str) -> int | None:
        """On the leader: the index of the entry holding `key`, once committed.

        An entry in the leader's own log commits as long as it leads (with the
        first entry of its term), so an uncommitted one is waited for, not
        proposed again (which would duplicate it)."""
        stored = self.storage.idempotency_lookup(key)
        if stored is None or stored <= self.commit_index:
            return stored
        await self.wait_applied(stored, self.limits.commit_timeout_s)
        return stored if self.storage.idempotency_lookup(key) == stored else None

    def _check_writable(self) -> None:
        if self.failure is not None:
            raise NotAvailable(f"this node stopped taking writes: {self.failure}")
        if self.closing:
            raise NotAvailable("this node is shutting down", retry_after_s=1)

    def fail(self, where: str, error: BaseException) -> None:
        """Fail-stop the whole node (see `Supervisor`): logged once, Raft stops,
        writes and linearizable reads 503 naming the reason, /health 503."""
        self._supervisor.fail(where, error)

    def _fail(self, reason: str) -> None:
        """The supervisor's fail-stop: what every failure comes down to."""
        if self.failure is None:
            self.failure = reason
        if self.driver is not None:
            self.driver.halt(reason)
        self._fail_apply_waiters()

    # Raft hooks ------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        # A removed member may still send us messages (it campaigns until it
        # learns of its removal); answering would recreate its link for good.
        if self.transport is not None and message.target not in self._removed_peers:
            self.transport.send(message.target, message)

    def on_peer_message(self, peer_id: int, message: Message) -> None:
        """A well-formed message from a member (the transport closes the link on
        a malformed one): an exception here is our bug, and fails the node."""
        if self.driver is not None:
            where = f"handling a message from node {peer_id}"
            self._supervisor.call(where, self.driver.step, message)

    def _on_role_change(self, role: Role, leader_id: int | None) -> None:
        if self._leader_changed is not None and not self._leader_changed.done():
            self._leader_changed.set_result(None)
        log.info("raft: %s, term %d, leader %s", role.name, self.term, leader_id or "unknown")

    async def _apply(self, entries: tuple[Entry, ...]) -> None:
        for entry in entries:
            if entry.type < 0:
                await self._execute(self.replicated.apply(entry))
        self.commit_index = entries[-1].index
        self._waiters.notify(self.commit_index)
        self._wake_apply_waiters()

    async def _execute(self, effects: list[Effect]) -> None:
        """Carry out what applying replicated state asks of this runtime."""
        for effect in effects:
            if isinstance(effect, SettingsChanged):
                await self._adopt_settings(effect)
            elif isinstance(effect, AddressChanged):
                self.pending_addresses.pop(effect.node_id, None)
                self._removed_peers.discard(effect.node_id)  # added again
                if self.transport is not None:
                    self.transport.address_changed(effect.node_id)
            elif isinstance(effect, MemberRemoved):
                self.pending_addresses.pop(effect.node_id, None)
                self._removed_peers.add(effect.node_id)
                if self.transport is not None:
                    self.transport.remove_peer(effect.node_id)
            elif isinstance(effect, PurgeCommitted):
                # Compacted once the core counts the whole batch as applied
                # (`_purge_applied`): a lagging follower applies a PURGE in the same
                # batch as the entries it purges, and the core compacts only what
                # it knows is applied.
                self._purge_to = max(self._purge_to, effect.index)
            elif self._on_leave is not None:  # RemovedSelf
                self._supervisor.spawn(self._on_leave(), "leave-cluster")

    def set_leave_handler(self, handler: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._on_leave = handler

    async def _adopt_settings(self, change: SettingsChanged) -> None:
        settings = change.settings
        if change.timeouts_changed and self.driver is not None:
            tick_s, election_ticks = _ticks(settings)
            self.driver.set_timeouts(tick_s, election_ticks, 1)
        if self.settings_path is not None:
            try:
                await asyncio.to_thread(write_settings_file, self.settings_path, settings)
            except OSError as error:
                log.error("could not rewrite %s: %s", self.settings_path, error)

    async def _purge_applied(self) -> None:
        index, self._purge_to = self._purge_to, 0
        if not index or self.driver is None or index <= self.storage.snapshot().index:
            return  # runs after every Ready: nothing to do is the usual case
        compact = plan_compaction(self.driver.core, index, self._snapshot_data())
        if compact is None:
            return  # a newer snapshot from the leader is installed or about to be
        try:
            await self.storage.write(WriteBatch(snapshot=compact.snapshot, compact_to=index))
        except (StorageFailed, OSError) as error:  # propagates: the supervisor fails the node
            raise StorageFailed(f"purge to {index}: {error}") from error

    async def _install_snapshot(self, snapshot: Snapshot) -> None:
        """The leader replaced our log with a snapshot: adopt its replicated state."""
        await self._execute(self.replicated.install_snapshot(snapshot.data))
        self.commit_index = max(self.commit_index, snapshot.index)
        self._waiters.notify(self.commit_index)
        self._wake_apply_waiters()

    def _snapshot_data(self) -> bytes:
        return self.replicated.snapshot_data()

    # Background work -------------------------------------------------------------------

    async def _purge_loop(self) -> None:
        """The leader proposes purges per the settings; every node applies them."""
        while True:
            await asyncio.sleep(self.limits.purge_interval_s)
            self.purge_checks += 1
            await self._propose_purge()

    async def _propose_purge(self) -> None:
        settings = self.settings
        if not settings.purge_enabled or self.failure or self.closing or not self.is_leader:
            return
        cutoff_ns = self._clock_ns() - settings.min_purge_duration_ns
        point = await asyncio.to_thread(
            self.storage.purge_point, settings.min_purge_records, cutoff_ns, self.commit_index
        )
        if point > self.storage.snapshot().index:
            with contextlib.suppress(NodeError):
                await self.propose_internal(ENTRY_TYPE_PURGE, encode_purge(point))

    async def _promote_loop(self) -> None:
        """The leader promotes every learner that has caught up (streaming the log)."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_timeout_ns / SECOND_NS)
            if self.is_leader and not self.failure and not self.closing:
                self._promote_caught_up()

    def _promote_caught_up(self) -> None:
        driver = self.core_driver
        for learner in driver.core.membership.learners:
            progress = driver.core.progress.get(learner)
            if progress is None or progress.state.value != "replicate":
                continue
            with contextlib.suppress(MembershipChangeRejected, NotLeader, NotAvailable):
                driver.propose_membership(ConfChange(ConfChangeKind.PROMOTE, learner))
                log.info("promoting learner %d to voter", learner)

    # Waiting for this node to apply an index -------------------------------------------

    async def wait_applied(self, index: int, timeout_s: float) -> None:
        """Until this node has applied `index` (or NotAvailable after `timeout_s`)."""
        if self.commit_index >= index:
            return
        if self.failure is not None or self.closing:
            raise NotAvailable("this node is not applying changes now", retry_after_s=1)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._apply_waiters, (index, next(self._apply_waiter_ids), future))
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            raise CommitTimeout(
                f"this node has not applied entry {index} yet; it is committed on the leader"
            ) from None

    def _wake_apply_waiters(self) -> None:
        waiters = self._apply_waiters
        while waiters and waiters[0][0] <= self.commit_index:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    def _fail_apply_waiters(self) -> None:
        waiters, self._apply_waiters = self._apply_waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(NotAvailable("this node stopped", retry_after_s=1))
                future.exception()

    # Reads -----------------------------------------------------------------------------

    async def linearizable_barrier(self) -> None:
        """Wait until this node has applied every write acknowledged before the call."""
        if self.failure is not None:
            raise NotAvailable(f"this node stopped serving: {self.failure}")
        index = await self.core_driver.read_index(self.limits.commit_timeout_s)
        await self.wait_applied(index, self.limits.commit_timeout_s)

    async def read_changes(self, query: ChangeQuery) -> PageResult:
        """Committed changes after `query.since`: from memory on the loop when the hot
        tail can answer with bounded work (consumers near the end; see
        `Storage.read_changes_in_memory`), else from SQLite in a worker thread."""
        return await self._read_upto(query, self.commit_index)

    async def _read_upto(
        self, query: ChangeQuery, upto: int, known: KnownPrefix | None = None
    ) -> PageResult:
        page = self._read_in_memory(query, upto, known)
        if page is not None:
            return page
        return await asyncio.to_thread(self._read_committed, query, upto, known)

    async def wait_changes(self, query: ChangeQuery, block_s: float) -> PageResult:
        """Like read_changes, but wait up to `block_s` for a matching change to commit."""
        deadline = asyncio.get_running_loop().time() + block_s
        upto = self.commit_index
        page = await self._read_upto(query, upto)
        # A commit may land while a cold read runs in a thread, before this request is
        # registered as a waiter: read again (only what is new) until the read covers
        # the commit index, then register with no await in between, so no wake-up can
        # be missed.
        while not page.bodies and upto < self.commit_index:
            known = KnownPrefix.after_read(query, page, upto)
            upto = self.commit_index
            page = await self._read_upto(query, upto, known)
        remaining_s = deadline - asyncio.get_running_loop().time()
        if page.bodies or remaining_s <= 0 or self.closing:
            return page
        known = KnownPrefix.after_read(query, page, upto)
        woken = await self._waiters.wait(query, known, remaining_s)
        if woken is not None:
            return woken
        return await self._read_upto(query, self.commit_index, known)  # only what is new

    def get_change(self, index: int) -> bytes | None:
        if index > self.commit_index:
            return None
        return self._guard(lambda: self.storage.get_change(index))

    def _read_committed(
        self, query: ChangeQuery, upto: int, known: KnownPrefix | None = None
    ) -> PageResult:
        """The page, from SQLite where the tail cannot answer: blocking, for a worker
        thread. With `known`, only what lies after `known.resume_after(query)`."""
        since, at_start = self._resume_point(query, known)
        page = self._guard(
            lambda: self.storage.read_changes(
                since, query.limit, query.tags, query.type, upto, at_start=at_start
            )
        )
        return self._page_result(query, page)

    def _read_in_memory(
        self, query: ChangeQuery, upto: int, known: KnownPrefix | None = None
    ) -> PageResult | None:
        """The page from the hot tail with bounded work, never SQLite; else None."""
        since, at_start = self._resume_point(query, known)
        page = self._guard(
            lambda: self.storage.read_changes_in_memory(
                since, query.limit, query.tags, query.type, upto, at_start=at_start
            )
        )
        return None if page is None else self._page_result(query, page)

    def _probe_in_memory(self, query: ChangeQuery, after: int, upto: int) -> bool | None:
        """Whether a change in (after, upto] matches, from the tail with bounded work;
        None when only SQLite can tell. A waiting long-poll's check on each commit."""
        return self._guard(
            lambda: self.storage.has_changes_in_memory(after, upto, query.tags, query.type)
        )

    def _page_result(self, query: ChangeQuery, page: ChangePage) -> PageResult:
        # The page's own compaction point, not the storage's current one: it dates the
        # page's atStart (`KnownPrefix.first_retained`).
        return PageResult(
            bodies=page.bodies,
            at_start=page.at_start,
            at_end=page.at_end,
            first_retained=page.compacted_through + 1,
            missed=query.since < page.compacted_through,
        )

    def _guard(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except CorruptionError as error:
            self.fail("reading stored changes", error)
            raise DataCorrupted(
                f"this node found corrupted data and stopped serving it ({error}); "
                "read from another node"
            ) from None

    @staticmethod
    def _resume_point(
        query: ChangeQuery, known: KnownPrefix | None
    ) -> tuple[int, KnownAtStart | None]:
        """Where a read of `query` starts, and the atStart it may take as known."""
        if known is None:
            return query.since, None
        at_start = None
        if known.at_start is not None:
            at_start = KnownAtStart(known.at_start, known.first_retained - 1)
        return known.resume_after(query), at_start

    # Helpers ---------------------------------------------------------------------------

    def _next_timestamp_ns(self) -> int:
        # Never go backwards, even if the wall clock does: _ts is informational,
        # but consumers find a monotonic timestamp less surprising.
        self._last_timestamp_ns = max(self._clock_ns(), self._last_timestamp_ns + 1)
        return self._last_timestamp_ns


def _check_fits(change: NewChange, entry_bytes_max: int) -> None:
    size = stored_bytes_max(change)
    if size > entry_bytes_max:
        raise PayloadTooLarge(
            f"the change would take up to {size} bytes once stored (JSON re-encoded "
            f"compactly, with _id and _ts); the limit is {entry_bytes_max} bytes"
        )


def _chain(source: asyncio.Future[Entry], target: asyncio.Future[Entry]) -> None:
    """Settle `target` like `source`, when `source` settles."""

    def settle(_: asyncio.Future[Entry]) -> None:
        if target.done():
            return
        if source.cancelled():
            _fail_future(target, NotAvailable("the first attempt was cancelled; retry"))
        elif (error := source.exception()) is not None:
            _fail_future(target, error)
        else:
            target.set_result(source.result())

    source.add_done_callback(settle)


def _fail_future(future: asyncio.Future[Entry], error: BaseException) -> None:
    if future.done():
        return
    if not isinstance(error, Exception):  # cancelled: the waiters learn only that
        error = NotAvailable("the first attempt with this Idempotency-Key stopped; retry")
    future.set_exception(error)
    future.exception()  # marked retrieved: nobody may be waiting


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


def recover_replicated_state(
    storage: Storage, node_id: int, default: Settings
) -> tuple[ReplicatedState, int]:
    """Rebuild the replicated state from the snapshot record and the committed
    internal entries after it, with the same `apply` live application uses
    (worker thread, before Raft starts). Returns it and the commit index: all of
    the log up to there counts as applied from now on."""
    snapshot = storage.snapshot()
    commit = max(storage.hard_state().commit, snapshot.index)
    committed = storage.internal_entries(snapshot.index + 1, commit + 1)
    return ReplicatedState.recover(node_id, snapshot.data, default, committed), commit


def _ticks(settings: Settings) -> tuple[float, int]:
    """Tick length (the heartbeat interval) and the election timeout in ticks."""
    tick_s = settings.heartbeat_timeout_ns / SECOND_NS
    election_ticks = max(2, round(settings.election_timeout_ns / settings.heartbeat_timeout_ns))
    return tick_s, election_ticks


def _load_node_id(storage: Storage) -> int:
    """The stored id, or a new random one that `start` persists."""
    stored = storage.meta_get(META_NODE_ID)
    if stored is not None:
        return int(stored)
    return secrets.randbelow(NODE_ID_MAX) + 1
