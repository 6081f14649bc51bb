"""Running many seeds, in one process or several, and summarizing the outcome."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from changeagent.sim.bugs import options_for_bug
from changeagent.sim.cluster import (
    SimOptions,
    Simulation,
    SimulationFailure,
    default_node_factory,
)

SCENARIOS = (
    "storage_failures",
    "purges_superseded",
    "leaves_at_restart",
    "failed_stopped_phases",
    "sends_during_write",
)


@dataclass(slots=True)
class SeedOutcome:
    seed: int
    events: int = 0
    elections: int = 0
    acknowledged: int = 0
    failure: str | None = None  # the failure report, None when the seed passed
    category: str = ""  # the failure's reason without numbers
    scenarios: dict[str, int] = field(default_factory=dict)  # `Stats` counters, by name


@dataclass(slots=True)
class Summary:
    seeds: int = 0
    events: int = 0
    elections: int = 0
    acknowledged: int = 0
    failures: list[SeedOutcome] = field(default_factory=list)
    # Per scenario counter: how many seeds reached it at least once.
    seeds_reaching: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCENARIOS, 0))

    def categories(self) -> dict[str, list[int]]:
        """Failing seeds grouped by failure category."""
        groups: dict[str, list[int]] = {}
        for outcome in self.failures:
            groups.setdefault(outcome.category, []).append(outcome.seed)
        return groups

    def add(self, outcome: SeedOutcome) -> None:
        self.seeds += 1
        self.events += outcome.events
        self.elections += outcome.elections
        self.acknowledged += outcome.acknowledged
        for name, count in outcome.scenarios.items():
            if count:
                self.seeds_reaching[name] += 1
        if outcome.failure is not None:
            self.failures.append(outcome)


def run_seed(seed: int, options: SimOptions | None = None) -> SeedOutcome:
    """Run one seed; a failure is captured in the outcome, not raised."""
    simulation = Simulation(seed, options)
    stats = simulation.stats
    try:
        result = simulation.run()
    except SimulationFailure as failure:
        return SeedOutcome(
            seed,
            stats.events,
            failure=failure.report(),
            category=failure.category,
            scenarios={name: getattr(stats, name) for name in SCENARIOS},
        )
    scenarios = {name: getattr(stats, name) for name in SCENARIOS}
    return SeedOutcome(
        seed, result.events, result.elections, result.acknowledged, None, "", scenarios
    )


def _run_seed_in_worker(work: tuple[int, SimOptions, str | None]) -> SeedOutcome:
    seed, base, bug = work
    options = options_for_bug(bug)
    options.nodes = base.nodes
    options.profile = base.profile
    options.fault_events = base.fault_events
    return run_seed(seed, options)


def run_seeds(
    seeds: range, options: SimOptions | None = None, *, jobs: int = 1, bug: str | None = None
) -> Iterator[SeedOutcome]:
    """Outcomes in seed order. With jobs > 1, seeds run in worker processes, which
    rebuild their options from `bug` plus `nodes`, `profile` and `fault_events`
    (the planted bugs' classes do not pickle)."""
    base = options if options is not None else options_for_bug(bug)
    if jobs <= 1:
        for seed in seeds:
            yield run_seed(seed, replace(base))
        return
    with multiprocessing.Pool(jobs) as pool:
        plain = replace(base, node_factory=default_node_factory)
        work = [(seed, plain, bug) for seed in seeds]
        yield from pool.imap(_run_seed_in_worker, work, chunksize=16)
