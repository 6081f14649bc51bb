"""`python -m bench`: start changeagent and its peers on loopback, run the scenarios,
print the table, write JSON (+ markdown and PNG charts) under bench/results/.

    python -m bench --quick                       # < 60 s, what the test suite runs
    python -m bench                               # full run (3 runs per figure)
    python -m bench --only writes,notify --systems changeagent,etcd
    python -m bench --only writes --systems changeagent --base HEAD~1   # before/after

With --base, that tree of changeagent (a git revision of this repository, or a
directory holding src/changeagent) runs as system "base" beside this one, and the
runs of each figure alternate between the systems (one run each, in turn, the
first system changing every round), so both see the same machine: the table's
changeagent/base column is the change's effect, from one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import install, procs
from bench.report import command_line, machine_info, summarize, write_results
from bench.scenarios import readscale
from bench.scenarios.cluster import run_failover, run_join
from bench.scenarios.common import Recorder, Settings, guarded
from bench.scenarios.consumers import run_consumers
from bench.scenarios.memory import run_memory
from bench.scenarios.reads import run_catchup, run_fanout, run_notify
from bench.scenarios.readscale import run_cache, run_longpolls, run_streams
from bench.scenarios.writes import run_writes
from bench.security import run_security
from bench.systems import SYSTEMS
from bench.systems.base import System
from bench.systems.changeagent import variant

RESULTS_DIR = Path(__file__).resolve().parent / "results"

Runner = Callable[[type[System], Settings, Recorder], None]


def _writes_standalone(cls: type[System], settings: Settings, recorder: Recorder) -> None:
    run_writes(cls, 1, settings, recorder)


def _writes_cluster(cls: type[System], settings: Settings, recorder: Recorder) -> None:
    if cls.family == "redis":
        recorder.skip("a. durable writes, 3 members", "redis",
                      "not applicable: single node (no Raft)")
        return
    run_writes(cls, 3, settings, recorder)


# name -> (letter, [(title, runner)]); the order is the order in which scenarios run.
SCENARIOS: dict[str, tuple[str, list[tuple[str, Runner]]]] = {
    "writes": ("a", [("a. durable writes, standalone", _writes_standalone),
                     ("a. durable writes, 3 members", _writes_cluster)]),
    "catchup": ("b", [("b. catch-up reads", run_catchup)]),
    "notify": ("c", [("c. notification latency", run_notify)]),
    "fanout": ("d", [("d. fan-out", run_fanout)]),
    "failover": ("e", [("e. failover", run_failover)]),
    "join": ("f", [("f. new member catch-up", run_join)]),
    "memory": ("g", [("g. memory", run_memory)]),
    "security": ("h", [("h. security overhead", run_security)]),
    "consumers": ("i", [("i. consumers", run_consumers)]),
    "streams": ("j", [(readscale.STREAMS, run_streams)]),
    "cache": ("k", [(readscale.CACHE, run_cache)]),
    "longpolls": ("l", [(readscale.LONGPOLLS, run_longpolls)]),
}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small counts and 1 run per figure (under 60 s)")
    parser.add_argument("--only", default="",
                        help="comma-separated scenarios: " + ",".join(
                            f"{name} ({letter})" for name, (letter, _) in SCENARIOS.items()))
    parser.add_argument("--systems", default="changeagent,etcd,redis",
                        help="comma-separated systems (default: all three)")
    parser.add_argument("--runs", type=int, default=0,
                        help="runs per figure (default: 3 full, 1 quick)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where servers keep their temporary data (default: $TMPDIR)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get install missing peers; skip them")
    parser.add_argument("--no-charts", action="store_true")
    parser.add_argument("--base", default=None, metavar="REV_OR_DIR",
                        help="also run this tree of changeagent as system 'base' (a git "
                        "revision, or a directory holding src/changeagent), runs alternating")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one setting, e.g. --set fanout_consumers=10000 or "
                        "--set write_clients=1,64 (names: see bench/scenarios/common.py)")
    arguments = parser.parse_args(argv)
    arguments.scenarios = _pick_scenarios(parser, arguments.only)
    arguments.system_names = [s.strip() for s in arguments.systems.split(",") if s.strip()]
    if arguments.base and "base" not in arguments.system_names:
        arguments.system_names.append("base")
    unknown = [s for s in arguments.system_names if s not in SYSTEMS and s != "base"]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    return arguments


def _pick_scenarios(parser: argparse.ArgumentParser, only: str) -> list[str]:
    if not only:
        return list(SCENARIOS)
    by_letter = {letter: name for name, (letter, _) in SCENARIOS.items()}
    chosen = []
    for item in (s.strip() for s in only.split(",") if s.strip()):
        name = by_letter.get(item, item)
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {item!r}; known: {', '.join(SCENARIOS)}")
        chosen.append(name)
    return [name for name in SCENARIOS if name in chosen]


def available_systems(names: list[str], no_install: bool, recorder: Recorder,
                      tools: tuple[str, ...] = ()) -> list[type[System]]:
    wanted = [n for n in names if n not in ("changeagent", "base")] + ["wrk", *tools]
    missing = {} if no_install else install.ensure_installed(wanted, recorder.log)
    readscale.nginx_missing_reason = missing.get("nginx")
    if "wrk" in missing:
        recorder.skip("wrk", "all", f"wrk unavailable ({missing['wrk']}); "
                      "HTTP writes use the asyncio generator only")
    systems = []
    for name in names:
        cls = SYSTEMS[name] if name != "base" else BASE_SYSTEM[0]
        reason = cls.missing_reason() or missing.get(name)
        if reason:
            recorder.skip("all scenarios", name, f"skipped: {reason}")
            continue
        systems.append(cls)
    return systems


BASE_SYSTEM: list[type[System]] = []  # the --base tree, once prepared


def prepare_base(revision_or_dir: str, into: Path) -> tuple[type[System], str]:
    """System "base": changeagent from a git revision (exported into `into`) or a
    directory holding src/changeagent. Returns it and what it is, for the results."""
    given = Path(revision_or_dir)
    if (given / "src" / "changeagent").is_dir():
        source, what = given.resolve() / "src", f"directory {given.resolve()}"
    else:
        repository = Path(__file__).resolve().parent.parent
        try:
            commit = subprocess.run(
                ["git", "-C", str(repository), "rev-parse", "--verify",
                 f"{revision_or_dir}^{{commit}}"],
                capture_output=True, text=True, check=True).stdout.strip()
            archive = subprocess.run(["git", "-C", str(repository), "archive", commit, "src"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
        except subprocess.CalledProcessError as error:
            raise SystemExit(f"--base {revision_or_dir}: not a directory with "
                             f"src/changeagent nor a git revision ({error})") from None
        source, what = into / "src", f"commit {commit[:12]}"
    command = ["env", f"PYTHONPATH={source}", sys.executable, "-m", "changeagent"]
    return variant("base", command), what


def _run_scenarios(names: list[str], systems: list[type[System]], settings: Settings,
                   recorder: Recorder, alternate: bool) -> None:
    """Each scenario's runners on each system; with `alternate` (--base) one run at a
    time, the systems taking turns and a different one first each round."""
    for name in names:
        letter, runners = SCENARIOS[name]
        recorder.log(f"== {letter}. {name}")
        for title, runner in runners:
            if not alternate:
                for cls in systems:
                    guarded(recorder, title, cls.name,
                            lambda r=runner, c=cls: r(c, settings, recorder))  # type: ignore[misc]
                continue
            one_run = dataclasses.replace(settings, runs=1, failover_runs=1, join_runs=1)
            for round_index in range(max(settings.runs, 1)):
                shift = round_index % len(systems)
                for cls in systems[shift:] + systems[:shift]:
                    guarded(recorder, title, cls.name,
                            lambda r=runner, c=cls, s=one_run: r(c, s, recorder))  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    settings = Settings.quick() if arguments.quick else Settings.full()
    if arguments.runs:
        settings.runs = arguments.runs
        settings.failover_runs = arguments.runs
        settings.join_runs = arguments.runs
    for assignment in arguments.set:
        settings.override(assignment)
    procs.install_cleanup_hooks()
    procs.PROCESSES.data_root = arguments.data_root
    open_files = procs.raise_open_file_limit()
    recorder = Recorder(log=lambda message: print(message, flush=True))
    base_tree = tempfile.TemporaryDirectory(prefix="bench-base-")
    base_what = None
    if arguments.base:
        base_system, base_what = prepare_base(arguments.base, Path(base_tree.name))
        BASE_SYSTEM[:] = [base_system]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    began = time.monotonic()
    recorder.log(f"bench {settings.mode} mode; open-file limit {open_files}")
    with ThreadPoolExecutor(max_workers=1) as pool:  # both start a changeagent process
        machine_future = pool.submit(machine_info, arguments.data_root or Path("/tmp"))
        tools = ("nginx",) if "cache" in arguments.scenarios else ()
        systems = available_systems(arguments.system_names, arguments.no_install, recorder,
                                    tools)
        machine = machine_future.result()
    if base_what:
        machine["base"] = base_what
    try:
        _run_scenarios(arguments.scenarios, systems, settings, recorder,
                       alternate=bool(arguments.base))
    finally:
        procs.PROCESSES.cleanup()
        base_tree.cleanup()
    results = {
        "started": started, "mode": settings.mode, "command": command_line(),
        "seconds": round(time.monotonic() - began, 1), "settings": vars(settings),
        "systems": [cls.name for cls in systems], "machine": machine,
        "rows": summarize(recorder), "skipped": recorder.skipped,
    }
    paths = write_results(results, recorder.samples, arguments.results_dir,
                          not arguments.no_charts)
    print()
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    print(f"total {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
