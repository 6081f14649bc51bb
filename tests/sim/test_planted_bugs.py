"""The checkers can fail: each planted bug is caught within a bounded number of seeds.

Each bug is scanned with the profile that exercises it (hostile for the core's
bugs: frequent crashes, partitions and elections, one entry per APPEND; purges
for the compaction that raised on a pending snapshot; mixed for the runtime's
fail-stop and leave bugs) and counts as caught only by the failure it causes:
a safety violation for the core's bugs, the exception for the compaction, a
failed node that answers writes or still leads, a removed node that never left.
The scan is deterministic, so the first catching seed is the same on every run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from changeagent.sim.bugs import PLANTED_BUGS, options_for_bug
from changeagent.sim.cluster import SimOptions, Simulation, SimulationFailure

SEEDS_MAX = 2000


def _safety(reason: str) -> bool:
    return not reason.startswith("liveness")


@dataclass(frozen=True)
class Catch:
    profile: str
    caught: Callable[[str], bool]  # whether a failure reason is the bug's doing


CATCHES: dict[str, Catch] = {
    "vote-without-up-to-date-check": Catch("hostile", _safety),
    "commit-previous-term": Catch("hostile", _safety),
    "ack-before-persist": Catch("hostile", _safety),
    "acks-sent-during-write": Catch("hostile", _safety),
    # Scenario 1: a follower's Raft loop stopped on a purge superseded by a snapshot.
    "compact-over-pending-snapshot": Catch("purges", lambda r: r.startswith("Compacted")),
    # Scenario 5: a storage failure in compaction left a leader that heartbeats but
    # refuses writes: caught when it answers a write after failing, or still leads
    # once faults stop.
    "compaction-failure-keeps-running": Catch(
        "mixed", lambda r: r.startswith("fail-stop") or "but still leads" in r
    ),
    # Scenario 7: a node removed just before it stopped never left.
    "recovery-ignores-must-leave": Catch("mixed", lambda r: "has not left" in r),
}


def options(bug: str | None, profile: str) -> SimOptions:
    chosen = options_for_bug(bug)
    chosen.profile = profile
    return chosen


@functools.cache
def first_failure(bug: str) -> SimulationFailure | None:
    catch = CATCHES[bug]
    for seed in range(SEEDS_MAX):
        try:
            Simulation(seed, options(bug, catch.profile)).run()
        except SimulationFailure as failure:
            if catch.caught(failure.reason):
                return failure
    return None


def test_every_planted_bug_has_a_catch() -> None:
    assert sorted(CATCHES) == sorted(PLANTED_BUGS)


@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_planted_bug_is_caught(bug: str) -> None:
    failure = first_failure(bug)
    assert failure is not None, f"{bug} survived {SEEDS_MAX} seeds"
    print(f"{bug}: caught by seed {failure.seed} at event {failure.step}: {failure.reason}")
    # The report names the seed and event and replays exactly.
    assert f"seed {failure.seed} failed at event {failure.step}" in failure.report()
    with pytest.raises(SimulationFailure) as replayed:
        Simulation(failure.seed, options(bug, CATCHES[bug].profile)).run()
    assert replayed.value.report() == failure.report()


@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_without_the_bug_the_catching_seed_passes(bug: str) -> None:
    failure = first_failure(bug)
    assert failure is not None
    Simulation(failure.seed, options(None, CATCHES[bug].profile)).run()
