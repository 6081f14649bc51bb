"""The benchmark suite's quick mode runs against changeagent and produces sane figures.

This keeps `python -m bench` from rotting: it starts a real changeagent node (and, for
the cluster scenarios, three, then a fourth that joins, is removed, and a fresh fourth
that joins again), drives it with the bench's generators and checks the results file.
Peers (etcd, Redis) are not part of this test; the bench skips whatever is missing.
Figures are only checked for sanity, never against targets.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
STANDALONE_SCENARIOS = ("a. durable writes, standalone", "b. catch-up reads",
                        "c. notification latency", "d. fan-out", "g. memory")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    results_dir = tmp_path_factory.mktemp("bench-results")
    data_root = tmp_path_factory.mktemp("bench-data")
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--systems", "changeagent",
         "--no-install", "--no-charts", "--results-dir", str(results_dir),
         "--data-root", str(data_root)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    latest = results_dir / "latest.json"
    assert latest.exists(), output[-4000:]
    results = json.loads(latest.read_text())
    results["_output"] = output
    results["_data_root"] = str(data_root)
    return results


def _values(results: dict, metric_prefix: str, scenario_prefix: str = "") -> list[float]:
    values = []
    for row in results["rows"]:
        if row["metric"].startswith(metric_prefix) and row["scenario"].startswith(
                scenario_prefix):
            stats = row["systems"].get("changeagent")
            if stats is not None:
                values += [v for v in stats["values"] if v is not None]
    return values


def test_changeagent_ran_and_nothing_standalone_failed(quick_results: dict) -> None:
    assert quick_results["mode"] == "quick"
    assert "changeagent" in quick_results["systems"], quick_results["skipped"]
    failures = [s for s in quick_results["skipped"]
                if s["system"] == "changeagent" and s["scenario"].startswith(STANDALONE_SCENARIOS)]
    assert not failures, failures


def test_standalone_writes_have_throughput_and_latency(quick_results: dict) -> None:
    throughput = _values(quick_results, "writes/s", "a. durable writes, standalone")
    assert throughput and all(v > 0 for v in throughput), throughput
    p50 = _values(quick_results, "p50 write latency", "a. durable writes, standalone")
    p99 = _values(quick_results, "p99 write latency", "a. durable writes, standalone")
    assert p50 and all(0 < v < 10_000 for v in p50), p50
    assert all(a <= b for a, b in zip(p50, p99, strict=True)), (p50, p99)


def test_reads_notifications_fanout_and_memory_are_sane(quick_results: dict) -> None:
    catchup = _values(quick_results, "changes/s reading")
    assert catchup and all(v > 0 for v in catchup), catchup
    notify = _values(quick_results, "p99 notification latency after the write was sent")
    assert notify and all(0 < v < 10_000 for v in notify), notify
    fanout = _values(quick_results, "time until all have the change")
    assert fanout and all(not math.isnan(v) and v < 30_000 for v in fanout), fanout
    rss = _values(quick_results, "RSS")
    assert rss and all(v > 1 for v in rss), rss


def test_cluster_scenarios_ran(quick_results: dict) -> None:
    failures = [s for s in quick_results["skipped"] if s["system"] == "changeagent"]
    assert not failures, failures
    for via in ("3 members", "3 members via a follower"):
        throughput = _values(quick_results, f"writes/s, {via}, ", "a. durable writes, 3 members")
        assert throughput and all(v > 0 for v in throughput), (via, throughput)
    terms = _values(quick_results, "Raft term increase", "a. durable writes, 3 members")
    assert len(terms) == 1 and terms[0] >= 0, terms
    failover = _values(quick_results, "seconds from kill -9 of the leader")
    assert failover and all(0 < v < 60 for v in failover), failover
    # Two joins: the second after the first new member was removed from the cluster.
    join = _values(quick_results, "changes/s caught up by a new member")
    assert len(join) == 2 and all(v > 0 for v in join), join


def test_every_process_and_directory_was_cleaned_up(quick_results: dict) -> None:
    data_root = quick_results["_data_root"]
    assert list(Path(data_root).iterdir()) == []
    leftovers = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(data_root in part for part in process.info["cmdline"] or []):
            leftovers.append(process.info)
    assert not leftovers, leftovers


def test_base_runs_another_tree_beside_this_one(tmp_path: Path) -> None:
    """`--base REV` exports that revision's src/ and runs it as system "base", the runs
    alternating with this tree's: both appear in every row, with their ratio."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "writes", "--systems",
         "changeagent", "--base", "HEAD", "--runs", "2", "--set", "write_clients=1",
         "--set", "asyncio_write_clients=1", "--set", "follower_write_clients=1",
         "--no-install", "--no-charts", "--results-dir", str(tmp_path / "results"),
         "--data-root", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    results = json.loads((tmp_path / "results" / "latest.json").read_text())
    assert results["systems"] == ["changeagent", "base"], results["skipped"]
    assert results["machine"]["base"].startswith("commit "), results["machine"]
    rows = [row for row in results["rows"] if row["metric"].startswith("writes/s")]
    assert len(rows) == 5, [row["metric"] for row in rows]  # standalone 2, 3 members 3
    for row in rows:
        for system in ("changeagent", "base"):
            values = row["systems"][system]["values"]
            assert len(values) == 2 and all(v > 0 for v in values), (row["metric"], system)
        assert row["ratios"]["base"] > 0, row["metric"]
    # Alternating: the log shows base's first run before changeagent's second.
    order = [line.split()[0] for line in completed.stdout.splitlines()
             if "writes/s, standalone, 1 client (wrk)" in line and line.split()[0] in
             ("changeagent", "base")]
    assert order == ["changeagent", "base", "base", "changeagent"], order
