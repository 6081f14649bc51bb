"""One simulated server running the production runtime's pure pieces.

Production's node splits into I/O (the asyncio driver, SQLite, sockets) and two
synchronous pieces: `ReadyPlanner`, which turns a Ready into ordered steps, and
`ReplicatedState`, which says what each committed internal entry means. The
simulator runs those two exactly as the node does, against `SimLog` (simulated
storage), the simulated network and simulated time:

- `pump` takes a Ready, plans it with `ReadyPlanner.plan(ready, durable last
  index)` and executes the steps in order. A `Persist` stages the write and
  suspends the plan until its `FsyncDone` (ticks, messages and proposals go on
  meanwhile, as they do while the driver awaits the write); the rest of the plan
  then runs, then `advance()`, then the after-advance compaction
  (`plan_compaction`, as `Replica._purge_applied`).
- `Apply` feeds the checkers and the client, answers the writes this node
  proposed, and applies internal entries through the node's `ReplicatedState`:
  `PurgeCommitted` compacts after `advance`, `RemovedSelf` makes the node leave;
  settings and address effects have nothing to do here.
- A restart rebuilds the state with `ReplicatedState.recover` from the durable
  log, as `Replica.start` does, then compacts to a committed purge point not yet
  compacted and leaves if `must_leave`.

Storage faults fail-stop the node (`Replica._fail`: Raft halts, waiting writes are
answered 503); a node that applied its own removal leaves: it writes a RESET
membership entry into its own log (as `ClusterMembership.leave` does) and departs
the simulated cluster, since from then on it is a one-member cluster of its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from changeagent.config import Settings
from changeagent.node.commit_notices import CommitNotices, Timer
from changeagent.node.ready_plan import (
    Apply,
    InstallSnapshot,
    NoteCommit,
    Persist,
    ReadyPlanner,
    Send,
    Step,
    plan_compaction,
    send_during_write,
)
from changeagent.node.replicated_state import PurgeCommitted, RemovedSelf, ReplicatedState
from changeagent.raft.confchange import ConfChange, ConfChangeKind
from changeagent.raft.config import RaftConfig
from changeagent.raft.core import RaftNode
from changeagent.raft.entry import ENTRY_TYPE_MEMBERSHIP, Entry, HardState
from changeagent.raft.interfaces import Membership, Snapshot
from changeagent.raft.ready import Ready, Role
from changeagent.sim.checkers import InvariantViolation
from changeagent.sim.events import FsyncDone, NoticesDue, Tick
from changeagent.sim.log import SimLog

if TYPE_CHECKING:
    from changeagent.sim.cluster import Simulation

# Simulated time is in abstract units; a tick is TICK_UNITS of them, so messages and
# fsyncs can complete between two ticks of the same node.
TICK_UNITS = 10
DEFAULT_SETTINGS = Settings()


@dataclass(frozen=True, slots=True)
class CompactionWrite:
    """The after-advance purge write (`WriteBatch(snapshot, compact_to)`)."""

    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class LeaveWrite:
    """The RESET entry a node that applied its own removal writes to leave."""


PendingWrite = Persist | CompactionWrite | LeaveWrite


@dataclass(slots=True)
class Plan:
    """A Ready being executed; `position` is the next step (a Persist suspends it)."""

    ready: Ready
    steps: list[Step]
    position: int = 0


@dataclass(slots=True)
class SimNode:
    """One simulated server: its disk survives crashes, its process state does not.

    States: running (`raft` set); failed (process up, Raft halted after a storage
    error, until an operator restarts it); leaving (Raft stopped, the leave write
    pending); crashed (`process_up` False); departed (left the cluster for good).
    """

    node_id: int
    log: SimLog
    replicated: ReplicatedState
    raft: RaftNode | None = None
    planner: ReadyPlanner | None = None
    incarnation: int = 0  # bumped when the process stops: its pending events are void
    process_up: bool = True
    plan: Plan | None = None  # the Ready being executed
    waiting: PendingWrite | None = None  # one write at a time, completed by FsyncDone
    applied: int = 0  # the applied index (production: the node's commit_index)
    purge_to: int = 0  # a purge point applied in this Ready, compacted after advance
    # Writes this node accepted as leader: index -> (term, payload), answered at apply.
    proposed: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    failed: str | None = None  # why storage failed; the node refuses writes until restarted
    leave_requested: bool = False  # RemovedSelf seen during the current Apply step
    leave_after_write: bool = False  # restart: leave once the recovery compaction is written
    departed: bool = False
    # Ground truth, independent of ReplicatedState: it applied its own REMOVE and
    # has not left yet (survives crashes: the apply was committed and noted).
    removal_applied: bool = False
    # Ground truth too: it was a member (committed), and a snapshot it installed
    # says it no longer is. Production does not leave then (see DESIGN.md).
    was_member: bool = False
    removed_by_snapshot: bool = False
    stop_on_removal: bool = False  # chaos: the operator stops it as it applies its removal
    membership: Membership = field(default_factory=Membership)  # latest known, kept when stopped
    # A leader's commit notices held for the next APPEND (the driver's CommitNotices).
    notices: CommitNotices = field(default_factory=CommitNotices)
    # The driver's timer: a NoticesDue whose number is not this one is void.
    notices_timer: int = 0

    @property
    def alive(self) -> bool:
        return self.raft is not None

    @property
    def restartable(self) -> bool:
        """Crashed, or failed and waiting for an operator."""
        return not self.departed and (not self.process_up or self.failed is not None)


class Runtime:
    """Executes plans, effects, faults and restarts for the simulation's nodes."""

    def __init__(self, simulation: Simulation) -> None:
        self.sim = simulation
        self.random = simulation.random
        self.checkers = simulation.checkers
        self.options = simulation.options
        self._snapshot_data_cache: dict[
            tuple[Settings, tuple[tuple[int, str], ...], tuple[int, ...]], bytes
        ] = {}

    # ---- lifecycle ----

    def create(self, node_id: int, snapshot: Snapshot) -> SimNode:
        log = SimLog(snapshot)
        state = self.options.replicated_state.from_snapshot(
            node_id, snapshot.data, DEFAULT_SETTINGS, _members(snapshot)
        )
        node = SimNode(node_id, log, state, applied=snapshot.index)
        node.was_member = _member(node_id, snapshot.membership)
        self.checkers.state_machine.observe_restore(node_id, snapshot.index)
        self._boot(node, log.restart_hard_state())
        return node

    def _boot(self, node: SimNode, hard_state: HardState) -> None:
        options = self.options
        hostile = options.profile == "hostile"
        config = RaftConfig(
            node_id=node.node_id,
            election_ticks=options.election_ticks,
            heartbeat_ticks=options.heartbeat_ticks,
            max_message_entries=1 if hostile else self.random.choice([1, 4, 64]),
            max_inflight_messages=self.random.choice([1, 4, 16]),
        )
        config.validate()
        self.checkers.commits.observe_restart(node.node_id, hard_state.commit)
        rng = random.Random(self.random.getrandbits(64))
        node.raft = options.node_factory(config, node.log, hard_state, rng, node.applied)
        node.planner = options.planner_factory(hard_state)
        node.process_up = True
        node.incarnation += 1
        self.sim.scheduler.push(
            self.random.randint(1, TICK_UNITS), Tick(node.node_id, node.incarnation)
        )

    def crash(self, node: SimNode) -> None:
        """The process dies: the core, the staged write and the plan are lost."""
        self._stop(node)
        node.process_up = False
        node.leave_after_write = False
        self.sim.note(f"crash {node.node_id}")

    def _stop(self, node: SimNode) -> None:
        if node.raft is not None:
            node.membership = node.raft.membership
        node.raft = None
        node.planner = None
        node.notices = CommitNotices()
        node.plan = None
        node.waiting = None
        node.purge_to = 0
        node.leave_requested = False
        node.proposed.clear()  # production answers them 503 ("may have been committed")
        node.log.crash()
        node.incarnation += 1
        self.checkers.completeness.observe_role(node.node_id, 0, False)

    def fail(self, node: SimNode, reason: str, *, halt: bool = True) -> None:
        """A storage error: fail-stop (`Replica._fail`). The process stays up."""
        node.failed = reason
        self.sim.stats.storage_failures += 1
        self.sim.note(f"{node.node_id} fails: {reason}")
        if halt:
            self._stop(node)

    def restart(self, node: SimNode) -> None:
        """Start the process again and recover as `Replica.start` does."""
        if node.process_up:
            self._stop(node)  # an operator restarts a failed node
        node.failed = None
        node.stop_on_removal = False
        self.sim.note(f"restart {node.node_id}")
        log = node.log
        hard_state = log.restart_hard_state()
        snapshot = log.snapshot()
        commit = max(hard_state.commit, snapshot.index)
        self._recover_applied(node, commit)
        node.replicated = self.options.replicated_state.recover(
            node.node_id,
            snapshot.data,
            DEFAULT_SETTINGS,
            log.internal_entries(snapshot.index + 1, commit + 1),
            members=_members(snapshot),
            removed_by_snapshot=log.removed_mark,
        )
        node.applied = commit
        self._boot(node, hard_state)
        if node.replicated.purge_index > snapshot.index:  # committed, not compacted yet
            node.purge_to = node.replicated.purge_index
            self._after_advance(node)
        if node.replicated.must_leave:  # removed before the crash, left only now
            self.sim.stats.leaves_at_restart += 1
            if node.waiting is not None:
                node.leave_after_write = True
            else:
                self._leave(node)

    def _recover_applied(self, node: SimNode, commit: int) -> None:
        """Everything up to the recovered commit index is served from now on: it must
        cover what the node served before (every Apply notes its index first)."""
        machine = self.checkers.state_machine
        previous = machine.last_applied.get(node.node_id, 0)
        if commit < previous:
            machine.observe_restore(node.node_id, commit)  # raises: served entries vanish
        first = node.log.snapshot().index
        if first > previous:
            machine.observe_restore(node.node_id, first)
            previous = first
        for index in range(previous + 1, commit + 1):
            self._observe_applied(node, node.log.entry_at(index))

    # ---- the Ready loop ----

    def pump(self, node: SimNode) -> None:
        """Take and execute Readies until one waits on a write or none is left."""
        while node.plan is None and node.waiting is None:
            raft = node.raft
            if raft is None or not raft.has_ready():
                return
            planner = node.planner
            assert planner is not None, "a running node has a planner"
            ready = raft.ready()
            node.plan = Plan(ready, planner.plan(ready, node.log.last_index()))
            incarnation = node.incarnation
            self._run_plan(node)
            # The commit index the core reports: checked against the log as the node
            # sees it (durable plus the write just staged), unless the node stopped.
            if ready.hard_state is not None and node.incarnation == incarnation:
                self.sim.observe_commit(node, ready.hard_state)

    def on_tick(self, node: SimNode) -> None:
        """As `RaftDriver._ticker` after its tick: while the node waits for a write
        (a Ready's, a compaction's), what may leave goes now."""
        raft = node.raft
        if raft is None or node.waiting is None:
            return
        sending = send_during_write(raft)
        if sending is not None:
            self.sim.stats.sends_during_write += len(sending.messages)
            self._execute(node, sending)

    def _run_plan(self, node: SimNode) -> None:
        plan = node.plan
        assert plan is not None
        while plan.position < len(plan.steps):
            step = plan.steps[plan.position]
            plan.position += 1
            if isinstance(step, Persist):
                self._stage(node, step)
                return
            self._execute(node, step)
            if node.leave_requested:
                self._on_removed_self(node)
                return
        node.plan = None
        self._finish(node, plan.ready)

    def _execute(self, node: SimNode, step: Step) -> None:
        if isinstance(step, Send):
            for message in node.notices.route(step.messages):
                self.sim.send(message)
            self._time_notices(node)
        elif isinstance(step, NoteCommit):
            node.log.note_commit(step.index)
        elif isinstance(step, Apply):
            for entry in step.entries:
                self._apply(node, entry)
        elif isinstance(step, InstallSnapshot):
            self._install_snapshot(node, step.snapshot)

    def _time_notices(self, node: SimNode) -> None:
        """As `RaftDriver._time_notices`; a stopped timer's event is made void."""
        change = node.notices.timer_change()
        if change is not None:
            node.notices_timer += 1
        if change is Timer.START:
            delay = self.random.randint(1, TICK_UNITS // 2)
            event = NoticesDue(node.node_id, node.incarnation, node.notices_timer)
            self.sim.scheduler.push(delay, event)

    def on_notices_due(self, event: NoticesDue) -> None:
        node = self.sim.nodes[event.node]
        if (
            event.incarnation != node.incarnation
            or event.timer != node.notices_timer
            or node.raft is None
        ):
            return
        for notice in node.notices.release_all():
            self.sim.send(notice)

    def _finish(self, node: SimNode, ready: Ready) -> None:
        raft = node.raft
        assert raft is not None
        if ready.soft_state is not None and ready.soft_state.role is not Role.LEADER:
            node.notices.clear()  # as the driver does when the node stops leading
            node.notices_timer += 1
        for read_state in ready.read_states:
            self.checkers.reads.observe_read_state(
                node.node_id, read_state.context, read_state.index
            )
            self.sim.note(f"{node.node_id} read {read_state.context!r} at {read_state.index}")
        raft.advance(ready)
        self._after_advance(node)

    def _stage(self, node: SimNode, step: Persist) -> None:
        mark = None
        if step.snapshot is not None and node.replicated.removed_by(_members(step.snapshot)):
            mark = True  # as Replica._snapshot_meta writes it with the snapshot
        node.log.stage(step.hard_state, step.snapshot, list(step.entries), mark)
        self._wait(node, step)

    def _wait(self, node: SimNode, write: PendingWrite) -> None:
        node.waiting = write
        delay = self.sim.chaos.fsync_delay(node.node_id)
        self.sim.scheduler.push(delay, FsyncDone(node.node_id, node.incarnation))

    def on_fsync(self, event: FsyncDone) -> None:
        node = self.sim.nodes[event.node]
        write = node.waiting
        if event.incarnation != node.incarnation or write is None:
            return
        node.waiting = None
        if self._storage_fault(node, write):
            return
        if isinstance(write, Persist):
            self._persisted(node, write)
            self._run_plan(node)
        elif isinstance(write, CompactionWrite):
            node.log.compact(write.snapshot)
            self.sim.note(f"{node.node_id} compacts to {write.snapshot.index}")
            if node.leave_after_write:
                node.leave_after_write = False
                self._leave(node)
                return
        else:
            self._depart(node)
            return
        self.sim.observe(node)

    def _persisted(self, node: SimNode, step: Persist) -> None:
        node.log.sync()
        if step.entries:
            first = step.entries[0].index
            self.checkers.log_matching.observe_durable_append(
                node.node_id, list(step.entries), node.log.term(first - 1)
            )
        if step.hard_state is not None:
            self.checkers.commits.observe_durable_commit(node.node_id, step.hard_state.commit)
        planner = node.planner
        assert planner is not None
        planner.persisted(step)

    def _storage_fault(self, node: SimNode, write: PendingWrite) -> bool:
        """Maybe inject a storage error into `write`: the node fails. What reached the
        disk is either all of the write or none of it (one transaction)."""
        chaos = self.sim.chaos
        if not chaos.inject_storage_fault(write):
            return False
        kind = type(write).__name__
        if self.random.random() < 0.5:
            self.sim.note(f"{node.node_id}: {kind} failed after reaching the disk")
            if isinstance(write, Persist):
                self._persisted(node, write)
            elif isinstance(write, CompactionWrite):
                node.log.compact(write.snapshot)
        halt = self.options.compaction_failure_halts or not isinstance(write, CompactionWrite)
        self.fail(node, f"injected storage error in {kind}", halt=halt)
        if not halt:  # planted bug: the node keeps running
            self.sim.observe(node)
        return True

    # ---- applying ----

    def _apply(self, node: SimNode, entry: Entry) -> None:
        self._observe_applied(node, entry)
        node.applied = entry.index
        answer = node.proposed.pop(entry.index, None)
        if answer is not None and answer[0] == entry.term:
            self.checkers.fail_stop.observe_write_answered(node.node_id, node.failed, entry.index)
        if entry.type >= 0:
            return
        for effect in node.replicated.apply(entry):
            if isinstance(effect, PurgeCommitted):
                # Compacted after advance: the core compacts only what it counts applied.
                node.purge_to = max(node.purge_to, effect.index)
            elif isinstance(effect, RemovedSelf):
                node.leave_requested = True
            # SettingsChanged, AddressChanged, MemberRemoved: nothing to do here.

    def _observe_applied(self, node: SimNode, entry: Entry) -> None:
        """What the checkers and the client learn from an entry applied here."""
        self.checkers.observe_apply(node.node_id, entry)
        if entry.type >= 0:
            if self.sim.client.acknowledge(entry.data):
                self.checkers.reads.observe_acknowledged(entry.index)
        elif entry.type == ENTRY_TYPE_MEMBERSHIP:
            change = ConfChange.decode(entry.data)
            if change.node_id != node.node_id:
                return
            if change.kind is ConfChangeKind.ADD_LEARNER:
                node.was_member = True
            elif change.kind is ConfChangeKind.REMOVE:
                node.removal_applied = True
                self.sim.note(f"{node.node_id} applies its own removal at {entry.index}")

    def _install_snapshot(self, node: SimNode, snapshot: Snapshot) -> None:
        if snapshot.index == 0:
            return
        self.checkers.state_machine.observe_restore(node.node_id, snapshot.index)
        node.applied = snapshot.index
        effects = node.replicated.install_snapshot(snapshot.data, _members(snapshot))
        if any(isinstance(effect, RemovedSelf) for effect in effects):
            node.leave_requested = True
        self.sim.note(f"{node.node_id} installs snapshot {snapshot.index}@t{snapshot.term}")
        if _member(node.node_id, snapshot.membership):
            node.was_member = True
        elif node.was_member and not node.removed_by_snapshot:
            node.removed_by_snapshot = True
            self.sim.note(f"{node.node_id} learns its removal from the snapshot")

    def _after_advance(self, node: SimNode) -> None:
        """`Replica._purge_applied`: compact to a purge point applied in this Ready."""
        index, node.purge_to = node.purge_to, 0
        raft = node.raft
        if not index or raft is None or index <= node.log.snapshot().index:
            return
        compact = plan_compaction(raft, index, self._snapshot_data(node))
        if compact is None:
            self.sim.note(f"{node.node_id}: purge to {index} superseded by a snapshot")
            self.sim.stats.purges_superseded += 1
            return
        self._wait(node, CompactionWrite(compact.snapshot))

    def _snapshot_data(self, node: SimNode) -> bytes:
        """`ReplicatedState.snapshot_data()`, memoized: its YAML encoding costs more
        than a whole simulated event, and the state rarely changes."""
        state = node.replicated
        key = (
            state.settings,
            tuple(sorted(state.addresses.items())),
            tuple(sorted(state.kept_learners)),
        )
        data = self._snapshot_data_cache.get(key)
        if data is None:
            data = self._snapshot_data_cache[key] = state.snapshot_data()
        return data

    def compact_now(self, node: SimNode, index: int) -> bool:
        """An extra compaction of an idle node to `index` (a chaos action)."""
        raft = node.raft
        if raft is None or node.plan is not None or node.waiting is not None:
            return False
        compact = plan_compaction(raft, index, self._snapshot_data(node))
        if compact is None:
            return False
        self._wait(node, CompactionWrite(compact.snapshot))
        return True

    # ---- leaving the cluster ----

    def _on_removed_self(self, node: SimNode) -> None:
        """After the Apply step that carried our own removal: the leave task stops
        Raft (`ClusterMembership.leave`); the rest of the plan is dropped."""
        node.leave_requested = False
        if node.stop_on_removal:
            self.sim.note(f"{node.node_id} is stopped while it leaves")
            self.crash(node)
            return
        self._leave(node)

    def _leave(self, node: SimNode) -> None:
        self._stop(node)
        self.sim.note(f"{node.node_id} leaves the cluster")
        self._wait(node, LeaveWrite())

    def _depart(self, node: SimNode) -> None:
        """The leave write is durable: a RESET entry after the applied index, a new
        term, our own vote. The node is a one-member cluster from now on: it leaves
        the simulated cluster (its terms and leadership are its own)."""
        log = node.log
        index = node.applied + 1
        term = log.durable_hard_state().term + 1
        change = ConfChange(ConfChangeKind.RESET, node.node_id)
        reset = Entry(index, term, ENTRY_TYPE_MEMBERSHIP, change.encode())
        log.stage(HardState(term, node.node_id, index), None, [reset], removed_mark=False)
        log.sync()
        node.replicated.apply(reset)
        node.departed = True
        node.removal_applied = False
        node.incarnation += 1
        self._check_left(node)
        self.sim.note(f"{node.node_id} left: a one-member cluster at {index}@t{term}")

    def _check_left(self, node: SimNode) -> None:
        """A restart of the departed node must find it standalone, with nothing left to do."""
        log = node.log
        snapshot = log.snapshot()
        hard_state = log.restart_hard_state()
        recovered = self.options.replicated_state.recover(
            node.node_id,
            snapshot.data,
            DEFAULT_SETTINGS,
            log.internal_entries(snapshot.index + 1, hard_state.commit + 1),
            members=_members(snapshot),
            removed_by_snapshot=log.removed_mark,
        )
        config = RaftConfig(node_id=node.node_id, election_ticks=5, heartbeat_ticks=1)
        core = RaftNode(config, log, hard_state, random.Random(0))
        alone = Membership(voters=frozenset({node.node_id}))
        if recovered.must_leave or core.membership != alone:
            raise InvariantViolation(
                "leave",
                f"node {node.node_id} left, but a restart would find must_leave="
                f"{recovered.must_leave} and membership {core.membership}",
            )


def _members(snapshot: Snapshot) -> frozenset[int]:
    return snapshot.membership.voters | snapshot.membership.learners


def _member(node_id: int, membership: Membership) -> bool:
    return node_id in membership.voters or node_id in membership.learners
