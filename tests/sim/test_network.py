"""The simulated network: loss, duplication, delay bounds and partitions."""

from __future__ import annotations

import random

import pytest

from changeagent.sim.network import Network, NetworkFaults
from changeagent.sim.scheduler import Scheduler, SchedulerOverflow


def test_a_perfect_network_delivers_once_within_the_delay_bounds() -> None:
    network = Network(random.Random(1), NetworkFaults(delay_min=2, delay_max=4))
    for _ in range(200):
        delays = network.send(1, 2)
        assert len(delays) == 1 and 2 <= delays[0] <= 4


def test_loss_and_duplication_happen_at_roughly_their_rates() -> None:
    faults = NetworkFaults(drop_probability=0.3, duplicate_probability=0.2)
    network = Network(random.Random(7), faults)
    counts = [len(network.send(1, 2)) for _ in range(5000)]
    assert 0.25 < counts.count(0) / 5000 < 0.35
    assert 0.1 < counts.count(2) / 5000 < 0.2


def test_slow_messages_reorder() -> None:
    faults = NetworkFaults(slow_probability=0.5, delay_max=2, delay_slow_max=50)
    network = Network(random.Random(3), faults)
    delays = [network.send(1, 2)[0] for _ in range(100)]
    assert max(delays) > 2


def test_symmetric_and_asymmetric_partitions_and_heal() -> None:
    network = Network(random.Random(0))
    network.partition([1], [2, 3], symmetric=False)
    assert not network.allows(1, 2) and network.allows(2, 1)
    assert network.send(1, 3) == []
    network.partition([2], [3], symmetric=True)
    assert not network.allows(2, 3) and not network.allows(3, 2)
    network.heal()
    assert all(network.allows(a, b) for a in (1, 2, 3) for b in (1, 2, 3))


def test_same_seed_same_fate() -> None:
    faults = NetworkFaults(drop_probability=0.2, duplicate_probability=0.2, slow_probability=0.2)
    runs = []
    for _ in range(2):
        network = Network(random.Random(9), faults)
        runs.append([network.send(1, 2) for _ in range(100)])
    assert runs[0] == runs[1]


def test_invalid_faults_are_rejected() -> None:
    with pytest.raises(ValueError):
        NetworkFaults(drop_probability=1.5).validate()
    with pytest.raises(ValueError):
        NetworkFaults(delay_min=5, delay_max=2).validate()


def test_scheduler_orders_by_time_then_by_insertion() -> None:
    scheduler: Scheduler[str] = Scheduler()
    scheduler.push(5, "late")
    scheduler.push(1, "first")
    scheduler.push(1, "second")
    assert [scheduler.pop(), scheduler.pop(), scheduler.pop(), scheduler.pop()] == [
        "first",
        "second",
        "late",
        None,
    ]
    assert scheduler.now == 5


def test_scheduler_has_a_limit() -> None:
    scheduler: Scheduler[int] = Scheduler(events_max=2)
    scheduler.push(0, 1)
    scheduler.push(0, 2)
    with pytest.raises(SchedulerOverflow):
        scheduler.push(0, 3)
