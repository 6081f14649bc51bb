"""Node: one changeagent node, a thin façade over the parts that do the work.

- `Replica` (replica.py): the Raft runtime: core, driver, supervisor, applied
  index, replicated state and its effects, compaction, fail-stop.
- `ChangeLog` (changelog.py): writes, forwarding, idempotency keys, web hooks.
- `ChangeReader` (reads.py): pages, single changes, long-polls, linearizable reads.
- `ClusterMembership` (membership.py): create, add, remove, join, leave, promote,
  and the cluster identity (`set_cluster`).
- `PeerRequests` (peer_requests.py): answers to what other members ask.
- `NodeBackups` (backup.py): online backups of the committed log, one at a time.
- `SeedSender` / `SeedReceiver` (seeding.py): a joining node gets the leader's
  committed log as a file (a backup's copy) rather than one APPEND at a time.

`server.py` builds a Node, wires its transport, and alone decides the order of
start-up and shutdown. Everything runs on one asyncio loop; disk work happens in
storage's writer thread or a worker thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from changeagent.change import NewChange
from changeagent.config import Settings
from changeagent.node.archiver import ArchiveStatus
from changeagent.node.backup import NodeBackups
from changeagent.node.changelog import ChangeLog
from changeagent.node.counters import RuntimeCounters
from changeagent.node.driver import OnApplied
from changeagent.node.errors import NotAvailable
from changeagent.node.identity import ClusterIdentity
from changeagent.node.limits import NodeLimits
from changeagent.node.membership import ClusterMembership
from changeagent.node.peer_requests import PeerRequests
from changeagent.node.query import ChangeQuery, PageResult
from changeagent.node.reads import ChangeReader
from changeagent.node.replica import Replica
from changeagent.node.seeding import SeedReceiver, SeedSender
from changeagent.node.seeding import remove_leftovers as remove_seed_leftovers
from changeagent.node.settings_entry import encode_settings
from changeagent.node.status import NodeStatus, state_name
from changeagent.node.waiters import DeliveryHook
from changeagent.raft import ENTRY_TYPE_CONFIG, Message, Role
from changeagent.storage import Storage

if TYPE_CHECKING:
    from changeagent.transport import Reply, Request, RequestContext, Transport

__all__ = ["Node", "NodeLimits", "NodeStatus", "RuntimeCounters"]


class Node:
    """Create it, `attach_transport` (clusters), `start`; `begin_shutdown`, `close`."""

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
        self.limits = limits
        self.identity = ClusterIdentity.load(storage)
        self.replica = Replica(
            storage, settings, settings_path, limits, self.identity, clock_ns, rng
        )
        self.changes = ChangeLog(self.replica, clock_ns)
        self.reads = ChangeReader(self.replica)
        self.backups = NodeBackups(self.replica)
        seeder = SeedSender(self.replica, self.backups)
        self.cluster = ClusterMembership(self.replica, self.identity, seeder)
        seeds = SeedReceiver(self.replica, self.cluster)
        self._peer_requests = PeerRequests(self.replica, self.changes, self.cluster, seeds)
        self._closed = False

    # What the API shows ----------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self.identity.node_id

    @property
    def settings(self) -> Settings:
        return self.replica.settings

    @property
    def failure(self) -> str | None:
        return self.replica.failure

    @property
    def closing(self) -> bool:
        return self.replica.closing

    def status(self) -> NodeStatus:
        """Everything /cluster and /diagnostics show, taken at one moment."""
        replica, storage = self.replica, self.storage
        core = replica.core_driver.core
        membership = core.membership
        standalone = self.identity.standalone
        return NodeStatus(
            node_id=self.node_id,
            cluster_id=self.identity.cluster_id,
            state=state_name(
                core.role, standalone, replica.closing, self.node_id in membership.learners
            ),
            role=core.role,
            leader_id=0 if standalone else core.leader_id or 0,
            term=core.term,
            first_index=storage.first_index(),
            last_index=storage.last_index(),
            applied_index=replica.applied.index,
            committed_index=core.commit_index,
            voters=membership.voters,
            learners=membership.learners,
            peers=core.progress if core.role is Role.LEADER else {},
            long_polls=self.reads.long_poll_count,
            purge_checks=replica.purge_checks,
            failure=replica.failure,
            closing=replica.closing,
        )

    def archive_status(self) -> ArchiveStatus | None:
        """The archive of purged changes (None without `archiveDir`)."""
        return self.replica.archiver.status()

    def counters(self) -> RuntimeCounters:
        """A copy of the runtime's counts (leader changes, proposals, purged entries)."""
        return replace(self.replica.counters)

    # Wiring and lifecycle (in the order server.py calls them) -----------------------

    def attach_transport(self, transport: Transport) -> None:
        self.replica.attach_transport(transport)

    def address_of(self, node_id: int) -> str | None:
        return self.replica.address_of(node_id)

    def on_peer_message(self, peer_id: int, message: Message) -> None:
        self.replica.on_peer_message(peer_id, message)

    async def on_request(self, context: RequestContext, request: Request) -> Reply:
        return await self._peer_requests.on_request(context, request)

    async def start(self) -> None:
        """Recover, start Raft (a lone voter leads before this returns), start promoting."""
        # A seed a killed process was receiving is of no use now (the leader adds the
        # node anyway and replicates, or a new join sends a new one).
        await asyncio.to_thread(remove_seed_leftovers, self.storage.data_dir)
        await self.replica.start()
        self.cluster.start()

    async def begin_shutdown(self) -> None:
        """Refuse new writes, answer long-polls now, and hand leadership over.
        Raft keeps running, so writes already in flight can still commit."""
        self.reads.close_long_polls()
        await self.replica.hand_over_leadership()

    async def close(self) -> None:
        """Stop Raft and background work; end every wait (once)."""
        if self._closed:
            return
        self._closed = True
        if not self.replica.closing:
            await self.begin_shutdown()
        await self.replica.stop()
        await self.changes.close()

    # Changes ---------------------------------------------------------------------------

    # These hand back their part's coroutine instead of awaiting it: no frame of their
    # own kept by every write in flight and every waiting long-poll.
    def append_change(
        self, change: NewChange, key: str = "", on_applied: OnApplied | None = None
    ) -> Coroutine[None, None, bytes]:
        """Store `change`; `on_applied`: see `ChangeLog.append_change`."""
        return self.changes.append_change(change, key, on_applied)

    def read_changes(self, query: ChangeQuery) -> Coroutine[None, None, PageResult]:
        return self.reads.read_changes(query)

    def wait_changes(
        self, query: ChangeQuery, block_s: float, hook: DeliveryHook | None = None
    ) -> Coroutine[None, None, PageResult]:
        """Wait up to `block_s` for a matching change; `hook`: see `CommitWaiters.wait`."""
        return self.reads.wait_changes(query, block_s, hook)

    def get_change(self, index: int) -> bytes | None:
        return self.reads.get_change(index)

    async def linearizable_barrier(self) -> None:
        await self.reads.linearizable_barrier()

    # Settings --------------------------------------------------------------------------

    async def update_settings(self, settings: Settings) -> Settings:
        """Replicate new settings through the log; they apply on every node when committed."""
        replica = self.replica
        data = encode_settings(settings.validate())
        if replica.is_leader:
            await replica.propose_internal(ENTRY_TYPE_CONFIG, data)
            return replica.settings
        timeout_s = self.limits.commit_timeout_s
        index = await replica.leader.call("put_config", data.decode(), timeout_s * 4)
        if not isinstance(index, int):
            raise NotAvailable("the leader gave no index for the new settings")
        await replica.wait_applied(index, timeout_s)
        return replica.settings
