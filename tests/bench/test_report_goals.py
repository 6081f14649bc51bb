"""The bench's goals table: issue 15's goals, which hold over every write row of
scenario a and for the 1,000,000-change catch-up and the empty node's RSS."""

from __future__ import annotations

from typing import Any

from bench import report

WRITES = "a. durable writes, standalone"
CLUSTER_WRITES = "a. durable writes, 3 members"


def _row(scenario: str, metric: str, ours: float, etcd_ratio: float | None) -> dict[str, Any]:
    systems: dict[str, Any] = {"changeagent": {"median": ours, "min": ours, "max": ours}}
    ratios: dict[str, float] = {}
    if etcd_ratio is not None:
        systems["etcd"] = {"median": ours / etcd_ratio, "min": 0.0, "max": 0.0}
        ratios["etcd"] = etcd_ratio
    return {"scenario": scenario, "metric": metric, "unit": "x", "better": "higher",
            "systems": systems, "ratios": ratios}


def _goal(rows: list[dict[str, Any]], name: str) -> str:
    [line] = [line for line in report._goal_lines(rows) if line.startswith(f"| {name} |")]
    return line


def test_the_write_row_goals_count_the_rows_met_and_name_the_worst() -> None:
    rows = [
        _row(WRITES, "writes/s, standalone, 1 client (wrk)", 2000.0, 0.74),
        _row(WRITES, "writes/s, standalone, 64 clients (wrk)", 9000.0, 1.07),
        _row(CLUSTER_WRITES, "writes/s, 3 members, 1 client (wrk)", 900.0, 0.65),
        _row(WRITES, "p50 write latency, standalone, 1 client (wrk)", 0.4, 1.32),
        _row(CLUSTER_WRITES, "p50 write latency, 3 members, 64 clients (wrk)", 7.0, 0.78),
        _row(CLUSTER_WRITES, "p99 write latency, 3 members, 1 client (wrk)", 2.0, 3.0),
        _row("b. catch-up reads", "writes/s, not a write row", 1.0, 0.1),
    ]
    throughput = _goal(rows, "every write row (scenario a): writes/s >= 1.0x etcd")
    assert "| 15 | 1 of 3 rows; worst 0.65x (3 members, 1 client (wrk)) | no |" in throughput
    latency = _goal(rows, "every write row (scenario a): p50 write latency <= 1.0x etcd")
    assert "| 15 | 1 of 2 rows; worst 1.32x (standalone, 1 client (wrk)) | no |" in latency


def test_the_write_row_goals_are_met_only_when_every_row_is() -> None:
    rows = [
        _row(WRITES, "writes/s, standalone, 1 client (wrk)", 2000.0, 1.0),
        _row(CLUSTER_WRITES, "writes/s, 3 members, 1 client (wrk)", 900.0, 1.2),
    ]
    line = _goal(rows, "every write row (scenario a): writes/s >= 1.0x etcd")
    assert line.endswith("| 2 of 2 rows; worst 1.00x (standalone, 1 client (wrk)) | yes |")


def test_without_etcd_the_write_row_goals_are_not_measured() -> None:
    rows = [_row(WRITES, "writes/s, standalone, 1 client (wrk)", 2000.0, None)]
    line = _goal(rows, "every write row (scenario a): writes/s >= 1.0x etcd")
    assert line.endswith("| 15 | not measured | - |")


def test_the_catch_up_goal_needs_the_run_of_1000000_changes() -> None:
    name = "new member catch-up on 1,000,000 changes >= 100,000 changes/s"
    million = "changes/s caught up by a new member, 1,000,000 changes"
    smaller = "changes/s caught up by a new member, 100,000 changes"
    assert _goal([_row("f. new member catch-up", million, 237_489.0, 3.1)], name).endswith(
        "| 237,489 x | yes |")
    assert _goal([_row("f. new member catch-up", million, 90_000.0, 1.2)], name).endswith(
        "| 90,000 x | no |")
    assert _goal([_row("f. new member catch-up", smaller, 237_489.0, 3.1)], name).endswith(
        "| not measured | - |")


def test_the_empty_node_rss_goal() -> None:
    name = "RSS of an empty node <= 30 MB"
    assert _goal([_row("g. memory", "RSS of an empty node", 46.2, 1.95)], name).endswith(
        "| 46.2 x | no |")
    assert _goal([_row("g. memory", "RSS of an empty node", 29.5, 1.2)], name).endswith(
        "| 29.5 x | yes |")
