"""Command line: python -m changeagent.sim --seeds N [--start S] [--nodes K] [--jobs J]
[--verbose] [--replay SEED] [--bug NAME] [--profile NAME]."""

from __future__ import annotations

import argparse
import sys
import time

from changeagent.sim.bugs import PLANTED_BUGS, RARELY_CAUGHT_BUGS, options_for_bug
from changeagent.sim.chaos import PROFILES
from changeagent.sim.cluster import SimOptions, Simulation, SimulationFailure
from changeagent.sim.runner import Summary, run_seeds


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m changeagent.sim",
        description="Run the seeded Raft cluster simulator.",
    )
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--nodes", type=int, default=None, help="initial voters (1-7)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--verbose", action="store_true", help="print every event")
    parser.add_argument("--replay", type=int, default=None, help="rerun one seed, verbosely")
    parser.add_argument(
        "--bug",
        choices=sorted(PLANTED_BUGS) + sorted(RARELY_CAUGHT_BUGS),
        default=None,
        help="plant a deliberate bug",
    )
    parser.add_argument(
        "--profile", choices=PROFILES, default="mixed", help="fault profile (mixed: per seed)"
    )
    parser.add_argument("--hostile", action="store_true", help="same as --profile hostile")
    parser.add_argument(
        "--fault-events", type=int, default=None, help="events in the fault phase (1000)"
    )
    parser.add_argument("--keep-going", action="store_true", help="do not stop at a failure")
    return parser.parse_args(argv)


def replay(seed: int, options: SimOptions) -> int:
    options.verbose = True
    try:
        result = Simulation(seed, options).run()
    except SimulationFailure as failure:
        print(failure.report())
        return 1
    print(f"seed {seed} passed: {result}")
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    options = options_for_bug(arguments.bug)
    options.nodes = arguments.nodes
    options.profile = "hostile" if arguments.hostile else arguments.profile
    if arguments.fault_events is not None:
        options.fault_events = arguments.fault_events
    if arguments.replay is not None:
        return replay(arguments.replay, options)
    options.verbose = arguments.verbose
    seeds = range(arguments.start, arguments.start + arguments.seeds)
    summary = Summary()
    started = time.perf_counter()
    for outcome in run_seeds(seeds, options, jobs=arguments.jobs, bug=arguments.bug):
        summary.add(outcome)
        if outcome.failure is not None:
            if not arguments.keep_going or arguments.verbose:
                print(outcome.failure)
            if not arguments.keep_going:
                break
    elapsed = time.perf_counter() - started
    print(
        f"{summary.seeds} seeds, {len(summary.failures)} failed, {summary.events} events, "
        f"{summary.elections} elections, {summary.acknowledged} proposals acknowledged, "
        f"{elapsed:.1f} s"
    )
    reached = ", ".join(f"{name} {count}" for name, count in summary.seeds_reaching.items())
    print(f"seeds reaching: {reached}")
    for category, failing in sorted(summary.categories().items()):
        shown = " ".join(str(seed) for seed in failing[:20])
        more = f" (+{len(failing) - 20} more)" if len(failing) > 20 else ""
        print(f"{len(failing)} x {category}: seeds {shown}{more}")
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
