"""The checkers can fail: each planted bug is caught within a bounded number of seeds.

A bug counts as caught when a seed fails with a safety violation (not a liveness
timeout, which the unmodified core may also hit). The scan uses the hostile
profile (frequent crashes, partitions and elections; one entry per APPEND), and is
deterministic, so the first catching seed is the same on every run.
"""

from __future__ import annotations

import pytest

from changeagent.sim.bugs import PLANTED_BUGS, options_for_bug
from changeagent.sim.cluster import SimOptions, Simulation, SimulationFailure

SEEDS_MAX = 2000


def hostile_options(bug: str | None) -> SimOptions:
    options = options_for_bug(bug)
    options.hostile = True
    return options


def first_safety_failure(bug: str) -> SimulationFailure | None:
    for seed in range(SEEDS_MAX):
        try:
            Simulation(seed, hostile_options(bug)).run()
        except SimulationFailure as failure:
            if not failure.reason.startswith("liveness"):
                return failure
    return None


@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_planted_bug_is_caught(bug: str) -> None:
    failure = first_safety_failure(bug)
    assert failure is not None, f"{bug} survived {SEEDS_MAX} seeds"
    print(f"{bug}: caught by seed {failure.seed} at event {failure.step}: {failure.reason}")
    # The report names the seed and event and replays exactly.
    assert f"seed {failure.seed} failed at event {failure.step}" in failure.report()
    with pytest.raises(SimulationFailure) as replayed:
        Simulation(failure.seed, hostile_options(bug)).run()
    assert replayed.value.report() == failure.report()


def test_without_a_bug_the_catching_seeds_are_safe() -> None:
    for bug in sorted(PLANTED_BUGS):
        failure = first_safety_failure(bug)
        assert failure is not None
        try:
            Simulation(failure.seed, hostile_options(None)).run()
        except SimulationFailure as clean:
            assert clean.reason.startswith("liveness"), clean.report()
