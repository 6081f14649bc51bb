"""A tiny deterministic harness for the Raft core: an in-memory LogReader, and a
cluster whose network is a FIFO queue we can cut, drop and drain by hand.

It follows the Ready contract literally: `messages` are sent before persisting,
the snapshot, entries and hard state are persisted, then `messages_after_persist`
are sent, committed entries are applied and the Ready is advanced.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from changeagent.raft import (
    ConfChange,
    ConfChangeKind,
    Entry,
    HardState,
    Membership,
    Message,
    RaftConfig,
    RaftNode,
    ReadState,
    Ready,
    Snapshot,
)
from changeagent.raft.memory_log import MemoryLog


def default_config(node_id: int, **overrides: object) -> RaftConfig:
    settings: dict[str, object] = {"election_ticks": 10, "heartbeat_ticks": 1}
    settings.update(overrides)
    return RaftConfig(node_id, **settings)  # type: ignore[arg-type]


@dataclass
class Peer:
    """One simulated server: its core and the durable state it would keep."""

    node: RaftNode
    log: MemoryLog
    hard_state: HardState = field(default_factory=HardState)
    applied: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    readies: int = 0
    applied_index: int = 0


class Cluster:
    """Nodes 1..n connected by a FIFO network that can drop messages."""

    def __init__(
        self,
        voters: int = 3,
        learners: Iterable[int] = (),
        seed: int = 0,
        bootstrap_index: int = 0,
        **config: object,
    ) -> None:
        """`bootstrap_index` 0 gives every node the membership in a snapshot at index
        0 (a static cluster); 1 puts it in a snapshot at index 1, term 1, which the
        leader can send to nodes that join later (the node layer's bootstrap)."""
        self.seed = seed
        self.config = config
        self.membership = Membership(frozenset(range(1, voters + 1)), frozenset(learners))
        self.peers: dict[int, Peer] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.delivered: list[Message] = []
        self.on_deliver: Callable[[Message], None] | None = None
        # Messages for which this returns True are lost (and kept in `dropped`).
        self.drop_if: Callable[[Message], bool] | None = None
        self.dropped: list[Message] = []
        for node_id in sorted(self.membership.voters | self.membership.learners):
            self.add_node(node_id, Snapshot(bootstrap_index, bootstrap_index, self.membership))

    def add_node(self, node_id: int, snapshot: Snapshot | None = None) -> Peer:
        """Start a node (a joining one has an empty log and no membership)."""
        log = MemoryLog(snapshot)
        hard_state = HardState(term=log.snap.term, commit=log.snap.index)
        peer = Peer(self.make_node(node_id, log, hard_state), log, hard_state)
        peer.applied_index = log.snap.index
        self.peers[node_id] = peer
        return peer

    def make_node(self, node_id: int, log: MemoryLog, hard_state: HardState) -> RaftNode:
        rng = random.Random(self.seed * 1000 + node_id)
        return RaftNode(default_config(node_id, **self.config), log, hard_state, rng)

    def restart(self, node_id: int) -> None:
        """Crash and restart: only what was persisted survives."""
        peer = self.peers[node_id]
        peer.node = self.make_node(node_id, peer.log, peer.hard_state)
        peer.applied = [entry for entry in peer.applied if entry.index <= peer.log.snap.index]
        peer.applied_index = peer.log.snap.index
        self.queue = [m for m in self.queue if m.source != node_id and m.target != node_id]

    def node(self, node_id: int) -> RaftNode:
        return self.peers[node_id].node

    # --- the Ready loop -----------------------------------------------------

    def process(self, node_id: int) -> None:
        peer = self.peers[node_id]
        while peer.node.has_ready():
            ready = peer.node.ready()
            self.handle_ready(peer, ready)

    def handle_ready(self, peer: Peer, ready: Ready) -> None:
        peer.readies += 1
        self.queue.extend(ready.messages)
        if ready.snapshot is not None:
            peer.log.install(ready.snapshot)
            peer.applied_index = ready.snapshot.index
        if ready.entries:
            peer.log.append(ready.entries)
        if ready.hard_state is not None:
            peer.hard_state = ready.hard_state
        self.queue.extend(ready.messages_after_persist)
        for entry in ready.committed_entries:
            if entry.index != peer.applied_index + 1:
                raise AssertionError(f"applied {entry.index} after {peer.applied_index}")
            peer.applied.append(entry)
            peer.applied_index = entry.index
        peer.read_states.extend(ready.read_states)
        peer.node.advance(ready)

    def process_all(self) -> None:
        for node_id in sorted(self.peers):
            self.process(node_id)

    # --- network ------------------------------------------------------------

    def deliver_one(self, message: Message) -> None:
        if (message.source, message.target) in self.cut or message.target not in self.peers:
            return
        if self.drop_if is not None and self.drop_if(message):
            self.dropped.append(message)
            return
        self.delivered.append(message)
        if self.on_deliver is not None:
            self.on_deliver(message)
        self.peers[message.target].node.step(message)

    def deliver(self, limit: int = 10_000) -> int:
        """Process and deliver until quiet; return the number of messages delivered."""
        count = 0
        self.process_all()
        while self.queue:
            batch, self.queue = self.queue, []
            for message in batch:
                self.deliver_one(message)
                count += 1
            self.process_all()
            if count > limit:
                raise AssertionError("the cluster did not quiesce")
        return count

    def take(self, predicate: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        """Remove and return queued messages matching `predicate` (after processing)."""
        self.process_all()
        taken = [m for m in self.queue if predicate(m)]
        self.queue = [m for m in self.queue if not predicate(m)]
        return taken

    def isolate(self, node_id: int) -> None:
        for other in self.peers:
            if other != node_id:
                self.cut.add((node_id, other))
                self.cut.add((other, node_id))

    def heal(self) -> None:
        self.cut.clear()

    def tick(self, node_id: int, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.node(node_id).tick()

    def tick_all(self, ticks: int = 1, deliver: bool = True) -> None:
        for _ in range(ticks):
            for node_id in sorted(self.peers):
                self.node(node_id).tick()
            if deliver:
                self.deliver()

    # --- conveniences -------------------------------------------------------

    def elect(self, node_id: int) -> None:
        self.node(node_id).campaign()
        self.deliver()

    def propose(self, node_id: int, *payloads: bytes) -> range:
        indices = self.node(node_id).propose([(0, payload, "") for payload in payloads])
        return indices

    def change(self, leader: int, kind: ConfChangeKind, node_id: int) -> int:
        return self.node(leader).propose_membership(ConfChange(kind, node_id))

    def leaders(self) -> list[int]:
        from changeagent.raft import Role

        return [i for i, p in self.peers.items() if p.node.role is Role.LEADER]

    def user_data(self, node_id: int) -> list[bytes]:
        return [entry.data for entry in self.peers[node_id].applied if entry.type >= 0]


def make_node(
    node_id: int = 1,
    voters: Iterable[int] = (1, 2, 3),
    entries: Iterable[tuple[int, int]] = (),
    hard_state: HardState | None = None,
    seed: int = 0,
    **config: object,
) -> tuple[RaftNode, MemoryLog]:
    """A single core whose log holds entries given as (index, term) pairs."""
    membership = Membership(frozenset(voters))
    log = MemoryLog(
        Snapshot(0, 0, membership),
        [Entry(index, term, 0, b"") for index, term in entries],
    )
    node = RaftNode(
        default_config(node_id, **config), log, hard_state or HardState(), random.Random(seed)
    )
    return node, log


def drain(node: RaftNode, log: MemoryLog | None = None) -> list[Message]:
    """Run the Ready loop of a lone core (persisting into `log`); return all messages."""
    messages: list[Message] = []
    while node.has_ready():
        ready = node.ready()
        messages.extend(ready.messages)
        if log is not None:
            if ready.snapshot is not None:
                log.install(ready.snapshot)
            if ready.entries:
                log.append(ready.entries)
        messages.extend(ready.messages_after_persist)
        node.advance(ready)
    return messages


def with_term(message: Message, term: int) -> Message:
    return replace(message, term=term)
