"""A small randomized stress test of the core with the safety properties of §5.4
checked after every event. (The full seeded simulator lives in changeagent.sim;
this one keeps the core's own test suite self-contained.)"""

from __future__ import annotations

import random

import pytest

from changeagent.raft import (
    ConfChange,
    ConfChangeKind,
    MembershipChangeRejected,
    NotLeader,
    ProposalDropped,
    RaftNode,
    Role,
)

from .harness import Cluster


class SafetyChecker:
    """Election safety, log matching of applied entries, leader completeness."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.leader_of_term: dict[int, int] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}

    def check(self) -> None:
        for node_id, peer in self.cluster.peers.items():
            node = peer.node
            if node.role is Role.LEADER:
                other = self.leader_of_term.setdefault(node.term, node_id)
                assert other == node_id, f"two leaders in term {node.term}: {other}, {node_id}"
            for entry in peer.applied[-20:]:
                known = self.committed.setdefault(entry.index, (entry.term, entry.data))
                assert known == (entry.term, entry.data), (
                    f"node {node_id} applied a different {entry.index}"
                )
        for node_id, peer in self.cluster.peers.items():
            node = peer.node
            if node.role is not Role.LEADER:
                continue
            log = peer.log
            for index in range(
                max(log.first_index(), 1), min(node.last_index, log.last_index()) + 1
            ):
                if index in self.committed:
                    assert log.term(index) == self.committed[index][0], (
                        f"leader {node_id} lacks committed entry {index}"
                    )


def change_membership(cluster: Cluster, node: RaftNode, rng: random.Random, next_node: int) -> int:
    kind = rng.choice(list(ConfChangeKind))
    if kind is ConfChangeKind.ADD_LEARNER:
        if len(cluster.peers) < 7:
            node.propose_membership(ConfChange(kind, next_node))
            cluster.add_node(next_node)
            next_node += 1
    elif kind is ConfChangeKind.PROMOTE:
        if node.membership.learners:
            node.propose_membership(ConfChange(kind, rng.choice(sorted(node.membership.learners))))
    else:
        members = sorted(node.membership.voters | node.membership.learners)
        if len(node.membership.voters) > 3 or rng.random() < 0.3:
            node.propose_membership(ConfChange(kind, rng.choice(members)))
    return next_node


def random_run(seed: int, steps: int = 400) -> None:
    rng = random.Random(seed)
    voters = rng.choice([3, 3, 5])
    cluster = Cluster(voters, seed=seed, bootstrap_index=1)
    checker = SafetyChecker(cluster)
    proposed: set[bytes] = set()
    next_node = voters + 1
    for step in range(steps):
        action = rng.random()
        node_ids = sorted(cluster.peers)
        target = rng.choice(node_ids)
        node = cluster.node(target)
        try:
            if action < 0.35:
                node.tick()
            elif action < 0.55:
                if node.role is Role.LEADER:
                    payload = b"%d-%d" % (seed, step)
                    node.propose([(0, payload, "")])
                    proposed.add(payload)
            elif action < 0.565:
                cluster.restart(target)
            elif action < 0.59:
                if node.role is Role.LEADER:
                    next_node = change_membership(cluster, node, rng, next_node)
            elif action < 0.60:
                if node.role is Role.LEADER:
                    node.transfer_leadership(rng.choice(sorted(node.membership.voters)))
            elif action < 0.62:
                node.read_index(b"r%d" % step)
            elif action < 0.64 and node.applied_index > 0:
                peer = cluster.peers[target]
                index = rng.randint(peer.log.snap.index, node.applied_index)
                snapshot = node.compact(index, b"s%d" % index)
                if snapshot is not None:
                    peer.log.purge(snapshot)
        except (NotLeader, ProposalDropped, MembershipChangeRejected, ValueError):
            pass
        cluster.process_all()
        rng.shuffle(cluster.queue)
        keep = []
        for message in cluster.queue:
            fate = rng.random()
            if fate < 0.1:
                continue  # dropped
            if fate < 0.4:
                keep.append(message)  # delayed
                continue
            cluster.deliver_one(message)
            if fate > 0.97:
                cluster.deliver_one(message)  # duplicated
        cluster.queue = keep
        cluster.process_all()
        checker.check()
    # Liveness: with faults off, a leader emerges and the cluster converges.
    for _ in range(300):
        cluster.tick_all(1)
        checker.check()
        leaders = cluster.leaders()
        if len(leaders) == 1 and all(
            p.node.commit_index == cluster.node(leaders[0]).commit_index
            for i, p in cluster.peers.items()
            if i in cluster.node(leaders[0]).membership.voters
        ):
            break
    leaders = cluster.leaders()
    assert len(leaders) == 1, f"seed {seed}: no single leader after the faults stopped"


@pytest.mark.parametrize("seed", range(60))
def test_random_faults_never_break_safety_and_the_cluster_recovers(seed: int) -> None:
    random_run(seed)
