"""Replica: this node's copy of the replicated log, and the Raft runtime that keeps it.

It runs the Raft core through a `RaftDriver` under a `Supervisor`, applies
committed entries (internal ones through the pure `ReplicatedState`, whose
effects it carries out: new timeouts, the -f file, peer links, compaction,
leaving), tracks the applied index, and fails stop. A fresh node bootstraps
with the membership {itself} at index 0 and campaigns at once, so its no-op is
entry 1 and its first change `_id` 2, as in ChangeAgent; every restart of a
lone voter begins a new term with another no-op.

Recovery at start rebuilds the replicated state with the same `apply` that
live application uses (`ReplicatedState.recover`), then finishes what a crash
interrupted: a committed purge not yet compacted, a removal not yet left.

With `archiveDir` set, a purge compacts only what the `Archiver` has made durable
in the archive (`archiver.py`); the rest waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changeagent.config import SECOND_NS, Settings, write_settings_file
from changeagent.ids import format_id
from changeagent.node.applied import AppliedIndex
from changeagent.node.archiver import Archiver
from changeagent.node.counters import RuntimeCounters
from changeagent.node.driver import Build, DriverHooks, OnApplied, RaftDriver
from changeagent.node.errors import CommitTimeout, NodeError, NotAvailable
from changeagent.node.identity import META_NODE_ID, META_REMOVED_BY_SNAPSHOT, ClusterIdentity
from changeagent.node.leader_link import LeaderLink
from changeagent.node.limits import NodeLimits
from changeagent.node.ready_plan import plan_compaction
from changeagent.node.replicated_state import (
    AddressChanged,
    Effect,
    MemberRemoved,
    PurgeCommitted,
    ReplicatedState,
    SettingsChanged,
)
from changeagent.node.settings_entry import encode_purge
from changeagent.node.supervisor import Supervisor
from changeagent.raft import (
    ENTRY_TYPE_PURGE,
    Entry,
    HardState,
    Membership,
    Message,
    NotLeader,
    ProposalDropped,
    Role,
    Snapshot,
)
from changeagent.storage import BatchRejected, Storage, StorageFailed, WriteBatch
from changeagent.storage.seed import SeedInfo
from changeagent.timed import TimeoutGroup

if TYPE_CHECKING:
    from changeagent.transport import Transport

log = logging.getLogger(__name__)

LeaveHandler = Callable[[], Coroutine[Any, Any, None]]


class Replica:
    """Create it, `attach_transport` (clusters), `start`; `stop` once."""

    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        settings_path: Path | None,
        limits: NodeLimits,
        identity: ClusterIdentity,
        clock_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
    ) -> None:
        self.storage = storage
        self.limits = limits
        self.identity = identity  # read here; changed only by ClusterMembership
        self.replicated = ReplicatedState(identity.node_id, settings)
        self.applied = AppliedIndex()
        self._commit_waits = TimeoutGroup(limits.commit_timeout_s, _commit_timeout)
        self.supervisor = Supervisor(self._fail)
        self.leader = LeaderLink(lambda: self.leader_id, lambda: not identity.standalone)
        self.transport: Transport | None = None
        self.driver: RaftDriver | None = None
        self.pending_addresses: dict[int, str] = {}  # known before their entry applies
        self.failure: str | None = None
        self.closing = False
        self.purge_checks = 0  # how many times the purge rule was evaluated (diagnostics)
        self.counters = RuntimeCounters()  # read by the metrics at scrape time
        self.archiver = Archiver(storage, self._request_compaction)
        self._last_leader = 0  # the leader last seen, to count leader changes
        self._settings_path = settings_path
        self._clock_ns = clock_ns
        self._rng = rng or random.Random()
        self._removed_peers: set[int] = set()  # their removal applied: no link to them
        self._purge_to = 0  # a purge applied, compacted after the core advances
        self._apply_listeners: list[Callable[[int], None]] = []
        self._on_leave: LeaveHandler | None = None

    # State -----------------------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self.identity.node_id

    @property
    def core_driver(self) -> RaftDriver:
        if self.driver is None:
            raise NotAvailable("this node has not started Raft yet", retry_after_s=1)
        return self.driver

    @property
    def is_leader(self) -> bool:
        return self.driver is not None and self.driver.core.role is Role.LEADER

    @property
    def leader_id(self) -> int:
        return (self.driver.core.leader_id or 0) if self.driver is not None else 0

    @property
    def membership(self) -> Membership:
        return self.core_driver.core.membership

    @property
    def settings(self) -> Settings:
        return self.replicated.settings

    def address_of(self, node_id: int) -> str | None:
        return self.replicated.addresses.get(node_id) or self.pending_addresses.get(node_id)

    def expect_address(self, node_id: int, address: str) -> None:
        """A member's address known before its entry applies (joining, adding)."""
        self.pending_addresses[node_id] = address

    def forget_pending_addresses(self) -> None:
        """This node left its cluster: addresses it only expected are moot."""
        self.pending_addresses.clear()

    # Wiring ----------------------------------------------------------------------------

    def attach_transport(self, transport: Transport) -> None:
        self.transport = transport
        self.leader.transport = transport
        self._limit_message_age(self.settings)

    def on_applied(self, listener: Callable[[int], None]) -> None:
        """Call `listener(applied_index)` each time the applied index advances."""
        self._apply_listeners.append(listener)

    def set_leave_handler(self, handler: LeaveHandler) -> None:
        self._on_leave = handler

    # Lifecycle -------------------------------------------------------------------------

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
        self.archiver.configure(self.settings.archive_dir)
        self.supervisor.spawn(self.archiver.run(), "archive")
        self._start_driver(applied=commit)
        if self.replicated.purge_index > self.storage.snapshot().index:
            self._purge_to = self.replicated.purge_index  # committed before a crash
            await self._purge_applied()
        if self.replicated.must_leave and self._on_leave is not None:
            await self._on_leave()  # removed before a crash, left only now
        self.supervisor.spawn(self._purge_loop(), "purge")
        if self.membership.voters == {self.node_id}:
            self.core_driver.campaign()
            await self._wait_leading(self.limits.commit_timeout_s)

    def _is_fresh(self) -> bool:
        storage = self.storage
        return (
            self.identity.standalone
            and storage.last_index() == 0
            and not storage.snapshot().membership.voters
        )

    def _limit_message_age(self, settings: Settings) -> None:
        """Raft messages that waited an election timeout for a connection are stale:
        the transport drops them instead of sending them late."""
        if self.transport is not None:
            self.transport.set_message_age_max(settings.election_timeout_ns / SECOND_NS)

    def _start_driver(self, applied: int) -> None:
        self._limit_message_age(self.settings)
        tick_s, election_ticks = ticks(self.settings)
        config = self.limits.raft_config(self.node_id, election_ticks, heartbeat_ticks=1)
        hooks = DriverHooks(
            send=self._send,
            apply=self._apply,
            install_snapshot=self._install_snapshot,
            on_role_change=self._on_role_change,
            snapshot_meta=self._snapshot_meta,
            after_advance=self._purge_applied,
            send_held=self._send_held,
        )
        self.driver = RaftDriver(
            self.storage,
            config,
            tick_s,
            hooks,
            applied=applied,
            pending_max=self.limits.pending_proposals_max,
            rng=self._rng,
            counters=self.counters,
        )
        self.applied.reset(applied)
        self.driver.start(self.supervisor.spawn)

    async def restart_driver(self, applied: int) -> None:
        """Replace the Raft core after the log was reset (join) or re-bootstrapped (leave)."""
        if self.driver is not None:
            await self.driver.stop()
        self._start_driver(applied)

    async def _wait_leading(self, timeout_s: float) -> None:
        """Until this node leads and has applied its term's no-op (writes then work)."""
        driver = self.core_driver
        async with asyncio.timeout(timeout_s):
            while not (
                driver.core.role is Role.LEADER and self.applied.index >= driver.core.last_index
            ):
                await self.wait_applied(self.applied.index + 1, timeout_s)

    async def hand_over_leadership(self) -> None:
        """Before shutting down, hand leadership to the most up-to-date voter
        (rolling restarts without a write outage). Raft keeps running, so writes
        already in flight can still commit."""
        self.closing = True
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
            async with asyncio.timeout(self.settings.election_timeout_ns / SECOND_NS):
                while driver.core.role is Role.LEADER:
                    await asyncio.sleep(driver.tick_s / 4)  # the transfer takes a few ticks
        handed = driver.core.role is not Role.LEADER
        outcome = "handed" if handed else "not handed"
        log.info("leadership %s to node %s", outcome, format_id(target))

    async def stop(self) -> None:
        """Stop Raft and every supervised task; end every wait."""
        self.closing = True
        if self.driver is not None:
            await self.driver.stop()
        await self.supervisor.stop()
        await asyncio.to_thread(self.archiver.close)
        self.applied.refuse("this node stopped")

    # Proposals and waits ---------------------------------------------------------------

    def propose(
        self, entry_type: int, build: Build, key: str = "", on_applied: OnApplied | None = None
    ) -> asyncio.Future[Entry]:
        """On the leader: queue an entry; the future resolves once it is applied here
        (`on_applied`: see `RaftDriver.propose`)."""
        return self.core_driver.propose(entry_type, build, key, on_applied)

    async def propose_internal(self, entry_type: int, data: bytes) -> Entry:
        """On the leader: propose an internal entry (settings, purge, address)."""
        self.check_writable()
        return await self.await_commit(self.propose(entry_type, lambda _: data))

    async def await_commit(self, future: asyncio.Future[Entry]) -> Entry:
        """The proposal's entry once applied; CommitTimeout after the commit timeout
        (the proposal goes on: waiting again is safe)."""
        return await self._commit_waits.wait(future)

    async def wait_applied(self, index: int, timeout_s: float) -> None:
        """Until this node has applied `index` (CommitTimeout after `timeout_s`)."""
        if self.applied.index >= index:
            return
        if self.failure is not None or self.closing:
            raise NotAvailable("this node is not applying changes now", retry_after_s=1)
        await self.applied.wait(index, timeout_s)

    async def read_index(self) -> int:
        """A linearizable read index (§6.4), confirmed by a quorum through the leader."""
        if self.failure is not None:
            raise NotAvailable(f"this node stopped serving: {self.failure}")
        return await self.core_driver.read_index(self.limits.commit_timeout_s)

    def after_send(self, callback: Callable[[], None]) -> None:
        """See `RaftDriver.after_send` (at once when no Raft runs)."""
        if self.driver is not None:
            self.driver.after_send(callback)
        else:
            callback()

    def take_commit_notice(self, peer: int) -> Message | None:
        """The commit notice held for `peer`, to send along with an answer to it."""
        return self.driver.take_commit_notice(peer) if self.driver is not None else None

    def check_writable(self) -> None:
        if self.failure is not None:
            raise NotAvailable(f"this node stopped taking writes: {self.failure}")
        if self.closing:
            raise NotAvailable("this node is shutting down", retry_after_s=1)

    # Failing stop ----------------------------------------------------------------------

    def fail(self, where: str, error: BaseException) -> None:
        """Fail-stop the whole node (see `Supervisor`): logged once, Raft stops,
        writes and linearizable reads 503 naming the reason, /health 503."""
        self.supervisor.fail(where, error)

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        if self.driver is not None:
            self.driver.halt(reason)
        self.applied.refuse(f"this node stopped: {reason}")

    # Raft hooks ------------------------------------------------------------------------

    def send_message(self, message: Message) -> None:
        """Send a Raft message the driver handed out (a commit notice)."""
        self._send(message)

    def _send(self, message: Message) -> None:
        transport = self.transport
        if transport is None:
            return
        target = message.target
        if target in self._removed_peers and not self._replicates_to(target):
            # Its removal is applied and the leader no longer owes it the commit
            # of that removal. It may still campaign until it learns of it;
            # answering would recreate its link for good: free it instead.
            transport.remove_peer(target)
            return
        transport.send(target, message)

    def _send_held(self) -> None:
        if self.transport is not None:
            self.transport.send_held()

    def _replicates_to(self, peer: int) -> bool:
        return self.driver is not None and self.driver.core.replicates_to(peer)

    def on_peer_message(self, peer_id: int, message: Message) -> None:
        """A well-formed message from a member (the transport closes the link on
        a malformed one): an exception here is our bug, and fails the node."""
        if self.driver is None:
            return
        try:
            self.driver.step(message)
        except Exception as error:  # the message is named only then: this is a hot path
            self.fail(f"handling a message from node {format_id(peer_id)}", error)

    def _on_role_change(self, role: Role, leader_id: int | None) -> None:
        self.leader.leadership_changed()
        if leader_id and leader_id != self._last_leader:
            self._last_leader = leader_id
            self.counters.leader_changes += 1
        term = self.driver.core.term if self.driver is not None else 0
        leader = format_id(leader_id) if leader_id else "unknown"
        log.info(
            "raft: %s, term %d, leader %s",
            role.name,
            term,
            leader,
            extra={"role": role.name, "term": term, "leader": leader},
        )

    async def _apply(self, entries: tuple[Entry, ...]) -> None:
        for entry in entries:
            if entry.type < 0:
                await self._execute(self.replicated.apply(entry))
        self._advance_applied(entries[-1].index)

    def _snapshot_meta(self, snapshot: Snapshot) -> dict[str, bytes]:
        """A leader's snapshot that removes this node is written with a mark that
        makes a restart leave, should the process stop before it has left."""
        if self.replicated.removed_by(_members(snapshot.membership)):
            return {META_REMOVED_BY_SNAPSHOT: b"1"}
        return {}

    async def _install_snapshot(self, snapshot: Snapshot) -> None:
        """The leader replaced our log with a snapshot: adopt its replicated state."""
        members = _members(snapshot.membership)
        await self._execute(self.replicated.install_snapshot(snapshot.data, members))
        self._advance_applied(snapshot.index)

    async def adopt_seed(self, seed: SeedInfo) -> None:
        """A member's committed log (a seed, `seeding.py`) replaces our empty one,
        after the join RPC and before the leader adds us: Raft restarts over a log
        that ends at the seed's last index, all of it committed and applied; the
        replicated state is recovered from it as at a start."""
        await self.core_driver.stop()
        # A term no lower than any entry's; no vote in it.
        hard_state = HardState(term=seed.hard_state.term, vote=0, commit=seed.last_index)
        try:
            await self.storage.write(WriteBatch(seed=seed, hard_state=hard_state))
        except BatchRejected as error:  # the seed file, not our database: go on without it
            self._start_driver(applied=self.applied.index)
            raise NotAvailable(f"the seed was not installed: {error}") from None
        previous = self.replicated.settings
        self.replicated, commit = await asyncio.to_thread(
            recover_replicated_state, self.storage, self.node_id, previous
        )
        self.archiver.forget_progress()  # what it archived belongs to the old log
        await self._adopt_settings(SettingsChanged(previous, self.replicated.settings))
        self._start_driver(applied=commit)
        self._advance_applied(commit)
        self.counters.seeded_entries += seed.entries

    def reset_replicated_state(self, membership: Membership) -> None:
        """The log was discarded to join a cluster: start over from its base membership."""
        self.replicated = ReplicatedState.from_snapshot(
            self.node_id, b"", self.settings, _members(membership)
        )
        self.archiver.forget_progress()  # what it archived belongs to the old log

    def _advance_applied(self, index: int) -> None:
        self.applied.advance(index)
        for listener in self._apply_listeners:
            listener(self.applied.index)

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
                # Its link is freed once the leader stops replicating to it (the
                # core goes on until it knows its removal committed): see `_send`.
                self.pending_addresses.pop(effect.node_id, None)
                self._removed_peers.add(effect.node_id)
                if self.transport is not None and not self._replicates_to(effect.node_id):
                    self.transport.remove_peer(effect.node_id)
            elif isinstance(effect, PurgeCommitted):
                # Compacted once the core counts the whole batch as applied
                # (`_purge_applied`): a lagging follower applies a PURGE in the same
                # batch as the entries it purges, and the core compacts only what
                # it knows is applied.
                self._purge_to = max(self._purge_to, effect.index)
            elif self._on_leave is not None:  # RemovedSelf
                self.supervisor.spawn(self._on_leave(), "leave-cluster")

    async def _adopt_settings(self, change: SettingsChanged) -> None:
        settings = change.settings
        self.archiver.configure(settings.archive_dir)
        if change.timeouts_changed and self.driver is not None:
            tick_s, election_ticks = ticks(settings)
            self.driver.set_timeouts(tick_s, election_ticks, 1)
        if change.timeouts_changed:
            self._limit_message_age(settings)
        if self._settings_path is not None:
            try:
                await asyncio.to_thread(write_settings_file, self._settings_path, settings)
            except OSError as error:
                log.error("could not rewrite %s: %s", self._settings_path, error)

    async def _purge_applied(self) -> None:
        target = self._purge_to
        before = self.storage.snapshot().index
        if not target or self.driver is None or target <= before:
            self._purge_to = 0
            return  # runs after every Ready: nothing to do is the usual case
        index = self.archiver.compactable(target)  # all of it, unless an archive lags
        if index >= target:
            self._purge_to = 0
        if index <= before:
            return  # the archive has not got there yet: it asks again when it has
        compact = plan_compaction(self.driver.core, index, self.replicated.snapshot_data())
        if compact is None:
            return  # a newer snapshot from the leader is installed or about to be
        try:
            await self.storage.write(WriteBatch(snapshot=compact.snapshot, compact_to=index))
        except (StorageFailed, OSError) as error:  # propagates: the supervisor fails the node
            raise StorageFailed(f"purge to {index}: {error}") from error
        self.counters.purged_entries += max(0, self.storage.snapshot().index - before)

    def _request_compaction(self) -> None:
        """The archive caught up: run `_purge_applied` again (between Readys)."""
        if self.driver is not None:
            self.driver.request_after_advance()

    # Purge -----------------------------------------------------------------------------

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
            self.storage.purge_point, settings.min_purge_records, cutoff_ns, self.applied.index
        )
        # Not again while an earlier purge point waits for this node's archive.
        purged = max(self.storage.snapshot().index, self.replicated.purge_index)
        # A bounded step: every write of every member waits while it is compacted.
        point = min(point, purged + self.limits.purge_entries_max)
        if point > purged:
            with contextlib.suppress(NodeError):
                await self.propose_internal(ENTRY_TYPE_PURGE, encode_purge(point))


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
    state = ReplicatedState.recover(
        node_id,
        snapshot.data,
        default,
        committed,
        members=_members(snapshot.membership),
        removed_by_snapshot=storage.meta_get(META_REMOVED_BY_SNAPSHOT) == b"1",
    )
    return state, commit


def _members(membership: Membership) -> frozenset[int]:
    return membership.voters | membership.learners


def ticks(settings: Settings) -> tuple[float, int]:
    """Tick length (the heartbeat interval) and the election timeout in ticks."""
    tick_s = settings.heartbeat_timeout_ns / SECOND_NS
    election_ticks = max(2, round(settings.election_timeout_ns / settings.heartbeat_timeout_ns))
    return tick_s, election_ticks


def _commit_timeout() -> CommitTimeout:
    return CommitTimeout(
        "the change was not committed in time; it may still commit. "
        "Retry with the same Idempotency-Key to get it exactly once"
    )
