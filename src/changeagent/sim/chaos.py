"""The fault and workload driver: what happens to the cluster, chosen by the seed.

Each seed first draws a *profile* (how lossy the network is, how slow fsync is,
how often nodes crash, partitions form, membership changes, ...), so that the
seeds together cover calm runs, hostile runs and everything between. Then every
`Chaos` event draws one weighted action: client proposals and ReadIndex
requests, crashes and restarts, partitions and heals, membership changes
(among them removing a member and stopping it at once), leadership transfers,
purges proposed through the leader, extra compactions and forced campaigns. The
profile also sets how often a write to storage fails (the node then fail-stops).

In the liveness phase only the client acts: it resubmits its pending proposals
to the leader until all of them are applied and every member has caught up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from changeagent.node.settings_entry import encode_member_context, encode_purge
from changeagent.raft.confchange import ConfChange, ConfChangeKind
from changeagent.raft.entry import ENTRY_TYPE_PURGE
from changeagent.raft.errors import NotLeader, ProposalDropped
from changeagent.raft.ready import Role
from changeagent.sim.client import PendingProposal
from changeagent.sim.host import CompactionWrite, PendingWrite, SimNode
from changeagent.sim.network import NetworkFaults

if TYPE_CHECKING:
    from changeagent.sim.cluster import Simulation

PROFILES = ("mixed", "hostile", "purges")
NODE_IDS_MAX = 16  # node ids are never reused; churn stops once this many were used
MEMBERS_MAX = 7


@dataclass(slots=True)
class Profile:
    fsync_delay_max: int
    weights: dict[str, int]
    # Probability that one write fails: the Ready's write, the compaction's, the leave's.
    write_fault_probability: float = 0.0
    compaction_fault_probability: float = 0.0
    # One node whose disk is slow (0: none): it lags behind the others, so the
    # leader compacts past what it sent it and sends snapshots while it writes.
    slow_disk_node: int = 0


class ChaosDriver:
    def __init__(self, simulation: Simulation) -> None:
        self.sim = simulation
        self.random = simulation.random
        self.profile = Profile(0, {})
        self._actions: list[tuple[str, Callable[[], None]]] = []
        self._cumulative: list[int] = []
        self._next_read = 0
        self.joiners: list[int] = []  # dynamic bootstrap: started, not yet voters
        self._joiners_added: set[int] = set()  # membership tests only, never iterated

    # ---- profile ----

    def choose_profile(self, nodes: int) -> None:
        rnd = self.random
        faults = NetworkFaults(
            drop_probability=rnd.choice([0.0, 0.0, 0.02, 0.1, 0.25]),
            duplicate_probability=rnd.choice([0.0, 0.02, 0.1]),
            slow_probability=rnd.choice([0.0, 0.05, 0.2]),
            delay_min=1,
            delay_max=rnd.choice([2, 5, 12]),
            delay_slow_max=80,
        )
        faults.validate()
        self.sim.network.faults = faults
        weights = {
            "propose": 8,
            "read": 3,
            "crash": rnd.choice([0, 1, 2, 4]),
            "restart": 3,
            "partition": rnd.choice([0, 1, 2, 4]),
            "heal": 2,
            "membership": rnd.choice([0, 1, 3]),
            "transfer": rnd.choice([0, 1, 2]),
            "compact": rnd.choice([0, 1, 3]),
            "campaign": rnd.choice([0, 0, 1]),
            "purge": rnd.choice([0, 1, 3, 6]),
            "remove_and_stop": rnd.choice([0, 0, 1]),
        }
        write_fault = rnd.choice([0.0, 0.0, 0.0, 0.002, 0.01])
        compaction_fault = rnd.choice([0.0, 0.0, 0.1, 0.3])
        fsync_delay_max = rnd.choice([0, 2, 8, 30])
        slow_disk = rnd.randint(1, nodes) if nodes > 1 and rnd.random() < 0.3 else 0
        profile = self.sim.options.profile
        if profile == "mixed" and rnd.random() < 0.15:
            profile = "purges"  # some mixed seeds are purge storms
        if profile == "hostile":
            weights.update(crash=4, partition=4, membership=0, transfer=2, campaign=1)
            weights.update(remove_and_stop=0)
            faults.drop_probability = 0.1
        elif profile == "purges":
            # Purges and compactions at the commit index, a slow follower, slow and
            # duplicated messages: followers apply purges while the leader's
            # snapshots arrive (in about 2% of these seeds; one in a thousand
            # seeds of the other mixtures).
            weights = dict.fromkeys(weights, 0)
            weights.update(propose=8, restart=3, heal=2, purge=10, compact=6)
            faults.drop_probability, faults.slow_probability = 0.02, 0.2
            faults.duplicate_probability = 0.1
            write_fault = compaction_fault = 0.0
            fsync_delay_max = 30
            slow_disk = rnd.randint(1, nodes) if nodes > 1 else 0
        elif profile != "mixed":
            raise ValueError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
        self.profile = Profile(fsync_delay_max, weights, write_fault, compaction_fault, slow_disk)
        handlers: dict[str, Callable[[], None]] = {
            "propose": self.propose,
            "read": self.read,
            "crash": self.crash,
            "restart": self.restart,
            "partition": self.partition,
            "heal": self.heal,
            "membership": self.change_membership,
            "transfer": self.transfer,
            "compact": self.compact,
            "campaign": self.campaign,
            "purge": self.purge,
            "remove_and_stop": self.remove_and_stop,
        }
        total = 0
        for name, weight in weights.items():
            if weight:
                total += weight
                self._actions.append((name, handlers[name]))
                self._cumulative.append(total)

    def fsync_delay(self, node_id: int) -> int:
        if not self.sim.faults_on:
            return self.random.randint(0, 2)  # a healthy disk
        delay_max = self.profile.fsync_delay_max
        if node_id == self.profile.slow_disk_node:
            delay_max = 4 * max(delay_max, 8)
        if delay_max and self.random.random() < 0.05:
            return self.random.randint(delay_max, 5 * delay_max)  # a stalled disk
        return self.random.randint(0, delay_max)

    def inject_storage_fault(self, write: PendingWrite) -> bool:
        """Whether `write` fails. Never more than a minority of the nodes at once
        (beyond that no member could make progress anyway)."""
        if not self.sim.faults_on:
            return False
        profile = self.profile
        if isinstance(write, CompactionWrite):
            probability = profile.compaction_fault_probability
        else:
            probability = profile.write_fault_probability
        if probability == 0.0 or self.random.random() >= probability:
            return False
        present = [node for node in self.sim.sorted_nodes() if not node.departed]
        return len(self.failed_nodes()) < max(1, (len(present) - 1) // 2)

    def act(self) -> None:
        if not self.sim.faults_on:
            return
        if self.joiners and self.random.random() < 0.5:
            self.grow()
            return
        pick = self.random.randrange(self._cumulative[-1])
        for (name, handler), bound in zip(self._actions, self._cumulative, strict=True):
            if pick < bound:
                self.sim.note(name)
                handler()
                return

    # ---- helpers ----

    def alive(self) -> list[SimNode]:
        return [node for node in self.sim.sorted_nodes() if node.alive]

    def failed_nodes(self) -> list[SimNode]:
        return [n for n in self.sim.sorted_nodes() if n.failed is not None and not n.departed]

    def leader(self) -> SimNode | None:
        """The live leader with the highest term, if any."""
        best: SimNode | None = None
        best_term = -1
        for node in self.alive():
            raft = node.raft
            if raft is not None and raft.role == Role.LEADER and raft.term > best_term:
                best, best_term = node, raft.term
        return best

    def _pick(self, nodes: list[SimNode]) -> SimNode | None:
        return self.random.choice(nodes) if nodes else None

    # ---- client actions ----

    def propose(self) -> None:
        client = self.sim.client
        due = client.due(self.sim.scheduler.now)[:2]
        if len(due) < 2:
            due.extend(client.new_payload() for _ in range(self.random.randint(1, 3)))
        node = self._pick(self.alive())
        if node is not None:
            self._propose_at(node, due, follow_hint=True)

    def _propose_at(
        self, node: SimNode, batch: list[PendingProposal], *, follow_hint: bool
    ) -> None:
        raft = node.raft
        if raft is None:
            return
        if node.failed is not None:
            self.sim.note(f"{node.node_id}: refuses writes ({node.failed})")
            return
        try:
            indices = raft.propose([(0, p.payload, p.payload.decode()) for p in batch])
        except NotLeader as error:
            self.sim.note(f"{node.node_id}: not leader (hint {error.leader_hint})")
            hint = self.sim.nodes.get(error.leader_hint or 0)
            if follow_hint and hint is not None and hint.alive:
                self._propose_at(hint, batch, follow_hint=False)
            return
        except ProposalDropped as error:
            self.sim.note(f"{node.node_id}: dropped ({error})")
            return
        now = self.sim.scheduler.now
        for proposal, index in zip(batch, indices, strict=True):
            self.sim.client.record_attempt(proposal, now, index)
            node.proposed[index] = (raft.term, proposal.payload)
        self.sim.note(f"{node.node_id} accepts {[p.payload for p in batch]} at {list(indices)}")
        self.sim.observe(node)

    def read(self) -> None:
        # Clients often ask whoever they last knew as leader, which may be deposed.
        leaders = [n for n in self.alive() if n.raft is not None and n.raft.role == Role.LEADER]
        if not leaders or self.random.random() < 0.5:
            leaders = self.alive()
        node = self._pick(leaders)
        if node is None or node.raft is None or node.failed is not None:
            return
        self._next_read += 1
        context = f"r{self._next_read}".encode()
        self.sim.checkers.reads.observe_read_request(context)
        try:
            node.raft.read_index(context)
        except (NotLeader, ProposalDropped) as error:
            self.sim.note(f"{node.node_id}: read refused ({type(error).__name__})")
            return
        self.sim.note(f"{node.node_id} reads {context!r}")
        self.sim.observe(node)

    # ---- faults ----

    def crash(self) -> None:
        """The leader often; a node writing a compaction (mid-purge) or leaving the
        cluster often too; else any running process."""
        running = [n for n in self.sim.sorted_nodes() if n.process_up and not n.departed]
        busy = [n for n in running if n.raft is None or isinstance(n.waiting, CompactionWrite)]
        leader = self.leader()
        draw = self.random.random()
        if leader is not None and draw < 0.4:
            node: SimNode | None = leader
        elif busy and draw < 0.7:
            node = self._pick(busy)
        else:
            node = self._pick(running)
        if node is not None:
            self.sim.crash(node)

    def restart(self) -> None:
        """A crashed process starts again, or an operator restarts a failed node."""
        node = self._pick([node for node in self.sim.sorted_nodes() if node.restartable])
        if node is not None:
            self.sim.restart(node)

    def partition(self) -> None:
        ids = sorted(self.sim.nodes)
        if len(ids) < 2:
            return
        network = self.sim.network
        kind = self.random.randrange(3)
        if kind == 0:
            leader = self.leader()
            isolated = leader.node_id if leader is not None else self.random.choice(ids)
            network.isolate(isolated, ids)
        else:
            shuffled = ids[:]
            self.random.shuffle(shuffled)
            cut = self.random.randint(1, len(ids) - 1)
            network.partition(shuffled[:cut], shuffled[cut:], symmetric=kind == 1)
        self.sim.note(f"partition {network.describe_partition()}")

    def heal(self) -> None:
        self.sim.network.heal()

    # ---- operator actions ----

    def change_membership(self) -> None:
        leader = self.leader()
        if leader is None or leader.raft is None:
            return
        membership = leader.raft.membership
        members = sorted(membership.voters | membership.learners)
        choices: list[ConfChange] = []
        next_id = max(self.sim.nodes) + 1
        if len(members) < MEMBERS_MAX and next_id <= NODE_IDS_MAX:
            # A member to promote once caught up, or a read-only one that stays a
            # learner (the role rides in the entry, as the node layer writes it).
            for keep_learner in (False, True):
                context = encode_member_context(f"sim:{next_id}", keep_learner=keep_learner)
                choices.append(ConfChange(ConfChangeKind.ADD_LEARNER, next_id, context))
        choices.extend(
            ConfChange(ConfChangeKind.PROMOTE, node_id) for node_id in sorted(membership.learners)
        )
        choices.extend(
            ConfChange(ConfChangeKind.DEMOTE, node_id) for node_id in sorted(membership.voters)
        )
        choices.extend(ConfChange(ConfChangeKind.REMOVE, node_id) for node_id in members)
        change = self.random.choice(choices)
        try:
            index = leader.raft.propose_membership(change)
        except (NotLeader, ProposalDropped) as error:
            self.sim.note(f"membership {change.kind.name} {change.node_id} refused: {error}")
            return
        self.sim.note(f"membership {change.kind.name} {change.node_id} at {index}")
        if change.kind is ConfChangeKind.ADD_LEARNER:
            # A joiner starts from the founders' bootstrap record (index 0 and the
            # initial membership): the core never ships an index-0 snapshot, so a
            # joiner that started empty would misread the membership entries it
            # receives from index 1 (seen as a split brain with an empty start).
            self.sim.add_node(change.node_id, self.sim.bootstrap)
            self.joiners = [j for j in self.joiners if j != change.node_id]
        self.sim.observe(leader)

    def grow(self) -> None:
        """Dynamic bootstrap: add the next joiner as a learner, then promote it."""
        leader = self.leader()
        if leader is None or leader.raft is None:
            return
        membership = leader.raft.membership
        joiner = self.joiners[0]
        in_flight = joiner in self._joiners_added and joiner not in membership.learners
        if joiner in membership.voters or in_flight:
            # Joined, or its ADD_LEARNER was lost or undone: ids are never reused.
            self.joiners.pop(0)
            return
        kind = (
            ConfChangeKind.PROMOTE
            if joiner in membership.learners
            else (ConfChangeKind.ADD_LEARNER)
        )
        try:
            index = leader.raft.propose_membership(ConfChange(kind, joiner))
        except (NotLeader, ProposalDropped) as error:
            self.sim.note(f"grow: {kind.name} {joiner} refused: {error}")
            return
        self._joiners_added.add(joiner)
        self.sim.note(f"grow: {kind.name} {joiner} at {index}")
        self.sim.observe(leader)

    def remove_and_stop(self) -> None:
        """DELETE /cluster/members/X, then stop X at once: now, or just as it applies
        its removal (before it could leave). Restarted, it must still leave."""
        leader = self.leader()
        if leader is None or leader.raft is None or leader.failed is not None:
            return
        membership = leader.raft.membership
        members = sorted(membership.voters | membership.learners)
        if len(members) < 2:
            return
        target = self.random.choice(members)
        try:
            index = leader.raft.propose_membership(ConfChange(ConfChangeKind.REMOVE, target))
        except (NotLeader, ProposalDropped) as error:
            self.sim.note(f"remove {target} refused: {error}")
            return
        self.sim.note(f"remove {target} at {index} and stop it")
        node = self.sim.nodes[target]
        if self.random.random() < 0.3 and node.process_up and node is not leader:
            self.sim.crash(node)
        else:
            node.stop_on_removal = True
        self.sim.observe(leader)

    def transfer(self) -> None:
        leader = self.leader()
        if leader is None or leader.raft is None:
            return
        voters = sorted(leader.raft.membership.voters - {leader.node_id})
        if not voters:
            return
        target = self.random.choice(voters)
        try:
            leader.raft.transfer_leadership(target)
        except (NotLeader, ValueError) as error:
            self.sim.note(f"transfer to {target} refused: {error}")
            return
        self.sim.note(f"transfer {leader.node_id} -> {target}")
        self.sim.observe(leader)

    def compact(self) -> None:
        """An extra compaction of one idle node, beside the purges every node applies
        (nodes then compact at different points, and leaders send more snapshots)."""
        candidates = [
            node
            for node in self.alive()
            if node.plan is None
            and node.waiting is None
            and node.failed is None
            and node.raft is not None
            and node.raft.applied_index > node.log.snapshot().index
        ]
        leader = self.leader()
        if leader in candidates and self.random.random() < 0.5:
            node: SimNode | None = leader  # laggards then need snapshots
        else:
            node = self._pick(candidates)
        if node is None or node.raft is None:
            return
        low, high = node.log.snapshot().index + 1, node.raft.applied_index
        if self.random.random() < 0.5:
            low = high
        index = self.random.randint(low, high)
        if self.sim.runtime.compact_now(node, index):
            self.sim.note(f"{node.node_id} writes a compaction to {index}")

    def purge(self) -> None:
        """The leader proposes a PURGE entry, as the node's purge loop does: every
        member compacts to its point once it applies it, so followers apply purges
        while snapshots from the leader arrive."""
        leader = self.leader()
        if leader is None or leader.raft is None or leader.failed is not None:
            return
        raft = leader.raft
        low, high = leader.log.snapshot().index + 1, raft.commit_index
        if low > high:
            return
        if self.random.random() < 0.5:
            low = high  # the commit index itself: laggards need snapshots
        point = self.random.randint(low, high)
        try:
            (index,) = raft.propose([(ENTRY_TYPE_PURGE, encode_purge(point), "")])
        except (NotLeader, ProposalDropped) as error:
            self.sim.note(f"purge refused: {error}")
            return
        self.sim.note(f"{leader.node_id} proposes a purge to {point} at {index}")
        self.sim.observe(leader)

    def campaign(self) -> None:
        node = self._pick(self.alive())
        if node is None or node.raft is None:
            return
        if node.node_id not in node.raft.membership.voters:
            return
        node.raft.campaign()
        self.sim.note(f"{node.node_id} campaigns")
        self.sim.observe(node)

    # ---- liveness ----

    def client_round(self) -> None:
        leader = self.leader()
        due = self.sim.client.due(self.sim.scheduler.now)
        if leader is not None and due:
            self._propose_at(leader, list(due[:8]), follow_hint=False)

    def progress_possible_without_failed(self) -> bool:
        """Whether, in the membership every node knows (the failed ones as they
        stopped), the voters that are neither failed nor departed form a majority,
        so that they can elect and commit."""
        for node in self.sim.sorted_nodes():
            if node.departed:
                continue
            voters = (node.raft.membership if node.raft is not None else node.membership).voters
            available = 0
            for voter in voters:
                other = self.sim.nodes.get(voter)
                if other is not None and other.failed is None and not other.departed:
                    available += 1
            if voters and available <= len(voters) // 2:
                return False
        return True

    def convergence_problem(self, *, include_failed: bool = True) -> str | None:
        """Why the cluster has not converged yet, or None when it has. Without
        `include_failed`, failed nodes are stopped and need not catch up."""
        leader = self.leader()
        if leader is None or leader.raft is None:
            return "no leader"
        if leader.failed is not None:
            return f"leader {leader.node_id} failed ({leader.failed}) but still leads"
        raft = leader.raft
        if leader.node_id not in raft.membership.voters:
            return f"leader {leader.node_id} is not a voter"
        if self.sim.client.pending:
            return f"{len(self.sim.client.pending)} proposals not applied"
        kept = leader.replicated.kept_learners
        if not kept <= raft.membership_at(leader.applied).learners:
            # Roles change on commit, membership on append: compare at what is applied.
            return f"kept learners {sorted(kept)} are not all learners at {leader.applied}"
        for node_id in sorted(raft.membership.voters | raft.membership.learners):
            node = self.sim.nodes.get(node_id)
            if node is not None and node.failed is not None and not include_failed:
                continue
            if node is None or node.raft is None:
                return f"member {node_id} is down"
            if node.applied < raft.commit_index:
                return f"member {node_id} applied {node.applied} < commit {raft.commit_index}"
            if node.applied == leader.applied and node.replicated.kept_learners != kept:
                # Roles are replicated state: equal applied prefixes, equal roles.
                return (
                    f"member {node_id} keeps learners {sorted(node.replicated.kept_learners)}, "
                    f"the leader {sorted(kept)}"
                )
        for node in self.sim.sorted_nodes():
            if node.departed or not (include_failed or node.failed is None):
                continue
            if node.removal_applied:
                return f"node {node.node_id} applied its own removal but has not left"
            if node.removed_by_snapshot:
                return f"node {node.node_id} installed a snapshot that removes it but has not left"
        return None
