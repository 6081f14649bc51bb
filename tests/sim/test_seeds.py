"""2,000 seeds of the full simulator (one process), plus determinism and replay."""

from __future__ import annotations

import functools

import pytest

from changeagent.sim.cluster import SimOptions, Simulation, SimulationFailure
from changeagent.sim.runner import Summary, run_seed

SEEDS = 2000


@functools.cache
def summary() -> Summary:
    result = Summary()
    for seed in range(SEEDS):
        result.add(run_seed(seed))
    return result


def reports(kind: str) -> list[str]:
    failures = summary().failures
    chosen = [o for o in failures if (o.category.startswith("liveness")) == (kind == "liveness")]
    return [o.failure or "" for o in chosen]


def test_no_safety_violation_in_2000_seeds() -> None:
    failing = reports("safety")
    assert not failing, f"{len(failing)} seeds broke safety; first:\n{failing[0]}"


def test_every_seed_converges_once_faults_stop() -> None:
    failing = reports("liveness")
    categories = {o.category: o.seed for o in summary().failures}
    assert not failing, f"{len(failing)} seeds did not converge: {categories}\n{failing[0]}"


def test_seeds_did_real_work() -> None:
    result = summary()
    assert result.seeds == SEEDS
    assert result.elections >= SEEDS
    assert result.acknowledged >= 10 * SEEDS


def trace_of(seed: int) -> list[str]:
    simulation = Simulation(seed, SimOptions(trace_length=100_000))
    try:
        simulation.run()
    except SimulationFailure as failure:
        return failure.trace
    return simulation.trace.lines()


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_a_seed_is_one_exact_run(seed: int) -> None:
    assert trace_of(seed) == trace_of(seed)


def test_different_seeds_differ() -> None:
    assert trace_of(1) != trace_of(2)


@pytest.mark.parametrize("nodes", [1, 2, 3, 5, 7])
def test_every_cluster_size_runs(nodes: int) -> None:
    Simulation(3, SimOptions(nodes=nodes)).run()
