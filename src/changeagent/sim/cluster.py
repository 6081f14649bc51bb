"""The simulated cluster: its nodes (`host`), the event loop, and the run's phases.

`Simulation(seed).run()` is one exact, reproducible run. Everything random comes
from one `random.Random(seed)`; each core gets its own `random.Random` seeded
from it, so the whole run depends on the seed and nothing else.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from changeagent.node.ready_plan import ReadyPlanner
from changeagent.node.replicated_state import ReplicatedState
from changeagent.raft.config import RaftConfig
from changeagent.raft.core import RaftNode
from changeagent.raft.entry import HardState
from changeagent.raft.interfaces import Membership, Snapshot
from changeagent.raft.messages import Message
from changeagent.raft.ready import Role
from changeagent.sim.checkers import Candidate, Checkers, InvariantViolation
from changeagent.sim.client import Client
from changeagent.sim.events import (
    Chaos,
    ClientRound,
    Deliver,
    Event,
    FsyncDone,
    NoticesDue,
    Tick,
    Trace,
    TraceRecord,
    format_record,
)
from changeagent.sim.host import TICK_UNITS, Runtime, SimNode
from changeagent.sim.log import SimLog
from changeagent.sim.network import Network, NetworkFaults
from changeagent.sim.scheduler import Scheduler

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
    # The fault profile (`chaos.PROFILES`): "mixed" draws one per seed; "hostile"
    # gives every seed frequent crashes, partitions and elections and one entry per
    # APPEND (so quorums acknowledge entries one at a time); "purges" makes
    # followers apply purges while the leader's snapshots arrive.
    profile: str = "mixed"
    node_factory: NodeFactory = default_node_factory
    # The production pieces; the planted bugs swap in subclasses.
    planner_factory: Callable[[HardState], ReadyPlanner] = ReadyPlanner
    replicated_state: type[ReplicatedState] = ReplicatedState
    compaction_failure_halts: bool = True  # planted bug: False keeps a failed node running


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
    stats: Stats


@dataclass(slots=True)
class Stats:
    """Counts of what a run did; the last five show that the scenarios the
    production runtime once got wrong, or handles apart, are reached."""

    events: int = 0
    elections: int = 0
    storage_failures: int = 0  # injected write errors (the node fail-stops)
    purges_superseded: int = 0  # a purge applied while a newer snapshot was pending
    leaves_at_restart: int = 0  # removed before a crash, left at restart
    failed_stopped_phases: int = 0  # liveness checked with failed nodes stopped
    sends_during_write: int = 0  # messages sent on a tick while a write waited


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
        self.runtime = Runtime(self)

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
            stats=self.stats,
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
            flags = _describe_flags(node)
            if raft is None:
                lines.append(
                    f"node {node.node_id}: {flags or 'down'}, applied {node.applied}, "
                    f"log {node.log.first_index()}..{node.log.last_index()}, "
                    f"durable {node.log.durable_hard_state()}"
                )
                continue
            membership = raft.membership
            lines.append(
                f"node {node.node_id}: {raft.role.name} term {raft.term} leader {raft.leader_id} "
                f"commit {raft.commit_index} applied {node.applied} "
                f"log {node.log.first_index()}..{node.log.last_index()} "
                f"voters {sorted(membership.voters)} learners {sorted(membership.learners)}"
                + (f" [{flags}]" if flags else "")
            )
            for peer, progress in sorted(raft.progress.items()):
                lines.append(
                    f"  peer {peer}: match {progress.match} next {progress.next} "
                    f"{progress.state.value} inflight {progress.inflight_messages}"
                )
        return lines

    def _setup(self) -> int:
        count = self.options.nodes
        if count is None and self.options.profile == "purges":
            count = 3
        if count is None:
            count = self.random.choice([1, 2, 3, 3, 3, 4, 5, 5, 5, 6, 7])
        if not 1 <= count <= NODES_MAX:
            raise ValueError(f"a cluster has 1 to {NODES_MAX} nodes, not {count}")
        self.chaos.choose_profile(count)
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
        """Faults off: heal and restart crashed nodes. First, while the nodes whose
        storage failed stay stopped, the others must make progress (when a quorum of
        them can); then an operator restarts the failed nodes and everyone converges."""
        self.faults_on = False
        self.network.faults = NetworkFaults()
        self.network.heal()
        self.scheduler.drain(keep=(Tick, Deliver, FsyncDone, NoticesDue))
        for node in self.sorted_nodes():
            node.stop_on_removal = False
            if not node.process_up and not node.departed:
                self.restart(node)
        self.scheduler.push(1, ClientRound())
        ticks = 0
        if self.chaos.failed_nodes() and self.chaos.progress_possible_without_failed():
            self.note("liveness: failed nodes stay stopped")
            self.stats.failed_stopped_phases += 1
            ticks = self._converge(include_failed=False)
        for node in self.chaos.failed_nodes():
            self.restart(node)
        return ticks + self._converge(include_failed=True)

    def _converge(self, *, include_failed: bool) -> int:
        start = self.scheduler.now
        deadline = start + self.options.liveness_ticks_max * TICK_UNITS
        while self.scheduler.now < deadline:
            if self.chaos.convergence_problem(include_failed=include_failed) is None:
                return (self.scheduler.now - start) // TICK_UNITS
            self._step()
        stage = "" if include_failed else " with the failed nodes stopped"
        raise self._failure(
            f"liveness: no convergence within {self.options.liveness_ticks_max} ticks{stage} "
            f"({self.chaos.convergence_problem(include_failed=include_failed)})"
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
            self.runtime.on_fsync(event)
        elif isinstance(event, NoticesDue):
            self.runtime.on_notices_due(event)
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
            if node.departed:
                continue  # a one-member cluster of its own: it votes in no election here
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
        node = self.runtime.create(node_id, snapshot)
        self.nodes[node_id] = node
        self.logs[node_id] = node.log
        self.observe(node)
        return node

    def crash(self, node: SimNode) -> None:
        self.runtime.crash(node)

    def restart(self, node: SimNode) -> None:
        self.runtime.restart(node)
        self.observe(node)

    def observe(self, node: SimNode) -> None:
        """Report the node's role to the checkers and run its Ready loop."""
        raft = node.raft
        if raft is None:
            return
        is_leader = raft.role == Role.LEADER
        if is_leader and self.checkers.election.leader_by_term.get(raft.term) is None:
            self.stats.elections += 1
            self.note(f"{node.node_id} leads term {raft.term}")
        self.checkers.observe_role(node.node_id, raft.term, is_leader)
        self.runtime.pump(node)

    def observe_commit(self, node: SimNode, hard_state: HardState) -> None:
        commits = self.checkers.commits
        previous = commits.volatile.get(node.node_id, 0)
        commits.observe_commit(node.node_id, hard_state.commit)
        if hard_state.commit > previous:
            self.checkers.completeness.observe_commit(
                node.node_id, hard_state.term, previous, hard_state.commit
            )

    # ---- events ----

    def _on_tick(self, event: Tick) -> None:
        node = self.nodes[event.node]
        if event.incarnation != node.incarnation or node.raft is None:
            return
        node.raft.tick()
        self.runtime.on_tick(node)
        self.scheduler.push(TICK_UNITS, Tick(node.node_id, node.incarnation))
        self.observe(node)

    def _on_deliver(self, message: Message) -> None:
        node = self.nodes.get(message.target)
        if node is None or node.raft is None:
            self.note("target left" if node is not None and node.departed else "target down")
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


def _describe_flags(node: SimNode) -> str:
    flags = []
    if node.departed:
        flags.append("departed")
    elif not node.process_up:
        flags.append("crashed")
    if node.failed is not None:
        flags.append(f"failed: {node.failed}")
    if node.waiting is not None:
        flags.append(f"waiting on {type(node.waiting).__name__}")
    if node.removal_applied:
        flags.append("applied its own removal")
    return ", ".join(flags)
