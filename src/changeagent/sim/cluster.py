"""The simulated cluster: hosts for Raft cores, the Ready loop, and the run's phases.

`Simulation(seed).run()` is one exact, reproducible run. Everything random comes
from one `random.Random(seed)`; each core gets its own `random.Random` seeded
from it, so the whole run depends on the seed and nothing else.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from changeagent.raft.config import RaftConfig
from changeagent.raft.core import RaftNode
from changeagent.raft.entry import ENTRY_TYPE_MEMBERSHIP, Entry, HardState
from changeagent.raft.interfaces import Membership, Snapshot
from changeagent.raft.messages import Message
from changeagent.raft.ready import Ready, Role
from changeagent.sim.checkers import Candidate, Checkers, InvariantViolation
from changeagent.sim.client import Client
from changeagent.sim.events import (
    Chaos,
    ClientRound,
    Deliver,
    Event,
    FsyncDone,
    Tick,
    Trace,
    TraceRecord,
    format_record,
)
from changeagent.sim.log import SimLog
from changeagent.sim.network import Network, NetworkFaults
from changeagent.sim.scheduler import Scheduler

# Simulated time is in abstract units; a tick is TICK_UNITS of them, so messages and
# fsyncs can complete between two ticks of the same node.
TICK_UNITS = 10
NODES_MAX = 7

NodeFactory = Callable[[RaftConfig, SimLog, HardState, random.Random, int], RaftNode]


def default_node_factory(
    config: RaftConfig, log: SimLog, hard_state: HardState, rng: random.Random, applied: int
) -> RaftNode:
    return RaftNode(config, log, hard_state, rng, applied=applied)


@dataclass(slots=True)
class SimOptions:
    """What one run looks like. Limits keep every run short and bounded."""

    nodes: int | None = None  # initial voters; chosen by the seed when None
    fault_events: int = 1000  # events in the fault phase
    liveness_ticks_max: int = 120  # ticks the cluster gets to converge once faults stop
    trace_length: int = 60
    verbose: bool = False
    election_ticks: int = 5
    heartbeat_ticks: int = 1
    ack_before_persist: bool = False  # planted bug: send messages_after_persist at once
    # Every seed gets the harshest profile: frequent crashes, partitions and elections,
    # one entry per APPEND (so quorums acknowledge entries one at a time).
    hostile: bool = False
    node_factory: NodeFactory = default_node_factory


class SimulationFailure(Exception):
    """A run broke an invariant (or the core raised): the seed, event number and trace."""

    def __init__(
        self, seed: int, step: int, reason: str, trace: list[str], state: list[str]
    ) -> None:
        self.seed = seed
        self.step = step
        self.reason = reason
        self.trace = trace
        self.state = state
        super().__init__(self.report())

    @property
    def category(self) -> str:
        """The reason without its numbers, to group failures that share a cause."""
        return re.sub(r"\d+", "N", self.reason.splitlines()[0])[:160]

    def report(self) -> str:
        lines = [f"seed {self.seed} failed at event {self.step}: {self.reason}"]
        lines.append("cluster state:")
        lines.extend("  " + line for line in self.state)
        lines.append(
            f"last {len(self.trace)} events (replay: python -m changeagent.sim "
            f"--replay {self.seed}):"
        )
        lines.extend("  " + line for line in self.trace)
        return "\n".join(lines)


@dataclass(slots=True)
class SimResult:
    seed: int
    nodes: int
    events: int
    elections: int
    applied_max: int
    acknowledged: int
    liveness_ticks: int


@dataclass(slots=True)
class SimNode:
    """One simulated server: its disk survives crashes, its core does not."""

    node_id: int
    log: SimLog
    raft: RaftNode | None = None  # None while crashed
    incarnation: int = 0
    ready: Ready | None = None  # the outstanding Ready, staged but not yet synced
    early_sent: bool = False  # messages_after_persist already sent (planted bug)
    applied: int = 0  # the state machine's applied index, durable with each apply

    @property
    def alive(self) -> bool:
        return self.raft is not None


@dataclass(slots=True)
class Stats:
    events: int = 0
    elections: int = 0


class Simulation:
    """One seeded run: setup, fault phase, liveness phase, with checks after every event."""

    def __init__(self, seed: int, options: SimOptions | None = None) -> None:
        from changeagent.sim.chaos import ChaosDriver

        self.seed = seed
        self.options = options if options is not None else SimOptions()
        self.random = random.Random(seed)
        self.scheduler: Scheduler[Event] = Scheduler()
        self.network = Network(self.random)
        self.nodes: dict[int, SimNode] = {}
        self.logs: dict[int, SimLog] = {}
        self.checkers = Checkers(self.logs)
        self.client = Client(retry_after=6 * self.options.election_ticks * TICK_UNITS)
        self.trace = Trace(self.options.trace_length)
        self.stats = Stats()
        self.record: TraceRecord | None = None
        self.faults_on = True
        self.bootstrap = Snapshot()  # the founders' initial record, set by _setup
        self.chaos = ChaosDriver(self)

    # ---- the run ----

    def run(self) -> SimResult:
        try:
            voters = self._setup()
            self._fault_phase()
            liveness_ticks = self._liveness_phase()
        except SimulationFailure:
            raise
        except Exception as error:  # the core raised, or a checker did: report with the trace
            raise self._failure(f"{type(error).__name__}: {error}") from error
        return SimResult(
            seed=self.seed,
            nodes=voters,
            events=self.stats.events,
            elections=self.stats.elections,
            applied_max=max(self.checkers.state_machine.applied, default=0),
            acknowledged=self.client.acknowledged,
            liveness_ticks=liveness_ticks,
        )

    def _failure(self, reason: str) -> SimulationFailure:
        return SimulationFailure(
            self.seed, self.stats.events, reason, self.trace.lines(), self.describe_state()
        )

    def describe_state(self) -> list[str]:
        """One line per node (and per peer the leader tracks), for failure reports."""
        lines = [f"partition: {self.network.describe_partition()}"]
        for node in self.sorted_nodes():
            raft = node.raft
            if raft is None:
                lines.append(f"node {node.node_id}: down, durable {node.log.durable_hard_state()}")
                continue
            membership = raft.membership
            lines.append(
                f"node {node.node_id}: {raft.role.name} term {raft.term} leader {raft.leader_id} "
                f"commit {raft.commit_index} applied {node.applied} "
                f"log {node.log.first_index()}..{node.log.last_index()} "
                f"voters {sorted(membership.voters)} learners {sorted(membership.learners)}"
            )
            for peer, progress in sorted(raft.progress.items()):
                lines.append(
                    f"  peer {peer}: match {progress.match} next {progress.next} "
                    f"{progress.state.value} inflight {progress.inflight_messages}"
                )
        return lines

    def _setup(self) -> int:
        count = self.options.nodes
        if count is None:
            count = self.random.choice([1, 2, 3, 3, 3, 4, 5, 5, 5, 6, 7])
        if not 1 <= count <= NODES_MAX:
            raise ValueError(f"a cluster has 1 to {NODES_MAX} nodes, not {count}")
        self.chaos.choose_profile()
        if count > 1 and self.random.random() < 0.3:
            self._bootstrap_dynamic(count)
        else:
            membership = Membership(voters=frozenset(range(1, count + 1)))
            self.bootstrap = Snapshot(membership=membership)
            for node_id in range(1, count + 1):
                self.add_node(node_id, self.bootstrap)
        self.scheduler.push(self.random.randint(1, TICK_UNITS), Chaos())
        return count

    def _bootstrap_dynamic(self, count: int) -> None:
        """The raft package's documented bootstrap: node 1 alone from an index-1
        record, campaigning at once; the others start empty and join through
        ADD_LEARNER then PROMOTE (the chaos driver grows the cluster first)."""
        self.note(f"dynamic bootstrap of {count} nodes")
        founder = Snapshot(index=1, term=1, membership=Membership(voters=frozenset({1})))
        node = self.add_node(1, founder)
        if node.raft is not None:
            node.raft.campaign()
            self.observe(node)
        for node_id in range(2, count + 1):
            self.add_node(node_id, Snapshot())
        self.chaos.joiners = list(range(2, count + 1))

    def _fault_phase(self) -> None:
        while self.stats.events < self.options.fault_events:
            self._step()

    def _liveness_phase(self) -> int:
        """Faults off: heal, restart, and let the cluster converge within a bound."""
        self.faults_on = False
        self.network.faults = NetworkFaults()
        self.network.heal()
        self.scheduler.drain(keep=(Tick, Deliver, FsyncDone))
        for node in self.sorted_nodes():
            if not node.alive:
                self.restart(node)
        self.scheduler.push(1, ClientRound())
        start = self.scheduler.now
        deadline = start + self.options.liveness_ticks_max * TICK_UNITS
        while self.scheduler.now < deadline:
            if self.chaos.converged():
                return (self.scheduler.now - start) // TICK_UNITS
            self._step()
        raise self._failure(
            f"liveness: no convergence within {self.options.liveness_ticks_max} ticks "
            f"({self.chaos.convergence_problem()})"
        )

    def _step(self) -> None:
        event = self.scheduler.pop()
        if event is None:
            raise self._failure("the event queue ran dry")
        self.stats.events += 1
        self.record = self.trace.begin(self.stats.events, self.scheduler.now, event)
        try:
            self._handle(event)
            self.checkers.after_event()
            if self.checkers.completeness.watermark > self.checkers.electability.checked_watermark:
                self._check_electability()
        except InvariantViolation as violation:
            raise self._failure(str(violation)) from violation
        if self.options.verbose:
            print(format_record(self.record))

    def note(self, text: str) -> None:
        if self.record is not None:
            self.record.notes.append(text)

    def _handle(self, event: Event) -> None:
        if isinstance(event, Tick):
            self._on_tick(event)
        elif isinstance(event, Deliver):
            self._on_deliver(event.message)
        elif isinstance(event, FsyncDone):
            self._on_fsync(event)
        elif isinstance(event, Chaos):
            self.chaos.act()
            self.scheduler.push(self.random.randint(1, 2 * TICK_UNITS), Chaos())
        else:
            self.chaos.client_round()
            self.scheduler.push(TICK_UNITS, ClientRound())

    def _check_electability(self) -> None:
        index = self.checkers.completeness.watermark
        term = self.checkers.completeness.committed_term[index]
        candidates: list[Candidate] = []
        durable_last: dict[int, tuple[int, int]] = {}
        for node in self.sorted_nodes():
            log = node.log
            durable_last[node.node_id] = (log.term(log.last_index()), log.last_index())
            if node.raft is None:
                continue
            last_index = log.view_last_index()
            last_term = log.view_term(last_index)
            holds = index <= log.view_snapshot().index or log.view_term(index) == term
            candidates.append(
                Candidate(
                    node.node_id,
                    last_term if last_term is not None else 0,
                    last_index,
                    holds,
                    node.raft.membership.voters,
                )
            )
        self.checkers.electability.observe_candidates(index, term, candidates, durable_last)

    # ---- nodes ----

    def sorted_nodes(self) -> list[SimNode]:
        return [self.nodes[node_id] for node_id in sorted(self.nodes)]

    def add_node(self, node_id: int, snapshot: Snapshot) -> SimNode:
        log = SimLog(snapshot)
        node = SimNode(node_id, log, applied=snapshot.index)
        self.nodes[node_id] = node
        self.logs[node_id] = log
        self.checkers.state_machine.observe_restore(node_id, snapshot.index)
        self._boot(node)
        return node

    def _boot(self, node: SimNode) -> None:
        config = RaftConfig(
            node_id=node.node_id,
            election_ticks=self.options.election_ticks,
            heartbeat_ticks=self.options.heartbeat_ticks,
            max_message_entries=1 if self.options.hostile else self.random.choice([1, 4, 64]),
            max_inflight_messages=self.random.choice([1, 4, 16]),
        )
        config.validate()
        hard_state = node.log.durable_hard_state()
        self.checkers.commits.observe_restart(node.node_id, hard_state.commit)
        rng = random.Random(self.random.getrandbits(64))
        node.raft = self.options.node_factory(config, node.log, hard_state, rng, node.applied)
        node.incarnation += 1
        first_tick = self.random.randint(1, TICK_UNITS)
        self.scheduler.push(first_tick, Tick(node.node_id, node.incarnation))
        self.observe(node)

    def crash(self, node: SimNode) -> None:
        node.raft = None
        node.ready = None
        node.log.crash()
        node.incarnation += 1
        self.checkers.completeness.observe_role(node.node_id, 0, False)
        self.note(f"crash {node.node_id}")

    def restart(self, node: SimNode) -> None:
        self.note(f"restart {node.node_id}")
        self._boot(node)

    def observe(self, node: SimNode) -> None:
        """Report the node's role to the checkers and drain its Ready."""
        raft = node.raft
        if raft is None:
            return
        is_leader = raft.role == Role.LEADER
        if is_leader and self.checkers.election.leader_by_term.get(raft.term) is None:
            self.stats.elections += 1
            self.note(f"{node.node_id} leads term {raft.term}")
        self.checkers.observe_role(node.node_id, raft.term, is_leader)
        self._pump(node)

    # ---- the Ready loop ----

    def _pump(self, node: SimNode) -> None:
        raft = node.raft
        if raft is None or node.ready is not None or not raft.has_ready():
            return
        ready = raft.ready()
        node.ready = ready
        for message in ready.messages:
            self.send(message)
        node.early_sent = self.options.ack_before_persist
        if node.early_sent:
            for message in ready.messages_after_persist:
                self.send(message)
        node.log.stage(ready.hard_state, ready.snapshot, list(ready.entries))
        if ready.hard_state is not None:
            self._observe_commit(node, ready.hard_state)
        for read_state in ready.read_states:
            self.checkers.reads.observe_read_state(
                node.node_id, read_state.context, read_state.index
            )
            self.note(f"{node.node_id} read {read_state.context!r} at {read_state.index}")
        self.scheduler.push(self.chaos.fsync_delay(), FsyncDone(node.node_id, node.incarnation))

    def _observe_commit(self, node: SimNode, hard_state: HardState) -> None:
        commits = self.checkers.commits
        previous = commits.volatile.get(node.node_id, 0)
        commits.observe_commit(node.node_id, hard_state.commit)
        if hard_state.commit > previous:
            self.checkers.completeness.observe_commit(
                node.node_id, hard_state.term, previous, hard_state.commit
            )

    def _on_fsync(self, event: FsyncDone) -> None:
        node = self.nodes[event.node]
        ready = node.ready
        if event.incarnation != node.incarnation or ready is None or node.raft is None:
            return
        staged = node.log.sync()
        if staged is not None and staged.entries:
            first = staged.entries[0].index
            previous_term = node.log.term(first - 1)
            self.checkers.log_matching.observe_durable_append(
                node.node_id, staged.entries, previous_term
            )
        if ready.hard_state is not None:
            self.checkers.commits.observe_durable_commit(node.node_id, ready.hard_state.commit)
        if ready.snapshot is not None and ready.snapshot.index > 0:
            self._install_snapshot(node, ready.snapshot)
        if not node.early_sent:
            for message in ready.messages_after_persist:
                self.send(message)
        for entry in ready.committed_entries:
            self._apply(node, entry)
        node.ready = None
        node.raft.advance(ready)
        self.observe(node)

    def _install_snapshot(self, node: SimNode, snapshot: Snapshot) -> None:
        self.checkers.state_machine.observe_restore(node.node_id, snapshot.index)
        node.applied = snapshot.index
        self.note(f"{node.node_id} installs snapshot {snapshot.index}@t{snapshot.term}")

    def _apply(self, node: SimNode, entry: Entry) -> None:
        self.checkers.observe_apply(node.node_id, entry)
        node.applied = entry.index
        if entry.type >= 0 and self.client.acknowledge(entry.data):
            self.checkers.reads.observe_acknowledged(entry.index)
        elif entry.type == ENTRY_TYPE_MEMBERSHIP:
            self.chaos.on_membership_applied(entry)

    # ---- events ----

    def _on_tick(self, event: Tick) -> None:
        node = self.nodes[event.node]
        if event.incarnation != node.incarnation or node.raft is None:
            return
        node.raft.tick()
        self.scheduler.push(TICK_UNITS, Tick(node.node_id, node.incarnation))
        self.observe(node)

    def _on_deliver(self, message: Message) -> None:
        node = self.nodes.get(message.target)
        if node is None or node.raft is None:
            self.note("target down")
            return
        if not self.network.allows(message.source, message.target):
            self.note("cut by partition")
            return
        node.raft.step(message)
        self.observe(node)

    def send(self, message: Message) -> None:
        delays = self.network.send(message.source, message.target)
        if not delays and self.record is not None:
            self.record.lost.append(message)
        for delay in delays:
            self.scheduler.push(delay, Deliver(message))
