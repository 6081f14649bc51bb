"""Machine info, the markdown table, the JSON results file and the PNG charts."""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.scenarios.common import Recorder, median

SYSTEM_ORDER = ["changeagent", "base", "etcd", "redis"]


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (result.stdout or result.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    commit = _first_line(["git", "-C", str(root), "log", "-1", "--format=%h %cs"])
    try:
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"],
                               capture_output=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return commit
    return commit + (" + uncommitted changes in src/" if dirty else "")


def machine_info(data_root: Path) -> dict[str, Any]:
    from bench.systems.changeagent import changeagent_command

    partition = max((p for p in psutil.disk_partitions(all=True)
                     if str(data_root.resolve()).startswith(p.mountpoint)),
                    key=lambda p: len(p.mountpoint), default=None)
    load_average = [round(v, 2) for v in os.getloadavg()]
    # The version commands run side by side (changeagent's alone takes ~0.5 s).
    with ThreadPoolExecutor(max_workers=5) as pool:
        versions = {
            "changeagent": pool.submit(_first_line, [*changeagent_command(), "--version"]),
            "changeagent_commit": pool.submit(_git_commit),
            "etcd": pool.submit(_first_line, ["etcd", "--version"]),
            "redis": pool.submit(_first_line, ["redis-server", "--version"]),
            "wrk": pool.submit(_first_line, ["wrk", "-v"]),
        }
        version_lines = {name: future.result() for name, future in versions.items()}
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "load_average_at_start": load_average,
        "python": platform.python_version(),
        # Which build: a distribution's (PGO, LTO) and a default pyenv build of one
        # version differ by 15-20 % of CPU per write (docs/BENCHMARKS.md, "Caveats").
        "python_executable": os.path.realpath(sys.executable),
        **version_lines,
        "data_filesystem": (f"{partition.fstype} on {partition.device}"
                            if partition else "unknown"),
    }


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _clean(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def summarize(recorder: Recorder) -> list[dict[str, Any]]:
    """One row per (scenario, metric): per-system median/min/max and ratios."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for (scenario, label, system), metric in recorder.metrics.items():
        row = rows.setdefault((scenario, label), {"scenario": scenario, "metric": label,
                                                   "unit": metric.unit,
                                                   "better": metric.better, "systems": {}})
        values = _clean(metric.values)
        row["systems"][system] = {
            "values": metric.values, "extra": metric.extra,
            "median": median(values) if values else float("nan"),
            "min": min(values) if values else float("nan"),
            "max": max(values) if values else float("nan"),
        }
    for row in rows.values():
        ours = row["systems"].get("changeagent")
        row["ratios"] = {}
        for peer, stats in row["systems"].items():
            if peer == "changeagent" or ours is None:
                continue
            if stats["median"] and not math.isnan(stats["median"]):
                row["ratios"][peer] = ours["median"] / stats["median"]
    return list(rows.values())


def _cell(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    if len(_clean(stats["values"])) > 1:
        return f"{_fmt(stats['median'])} ({_fmt(stats['min'])}-{_fmt(stats['max'])})"
    return _fmt(stats["median"])


def _short_counts(rows: list[dict[str, Any]]) -> list[str]:
    notes = []
    for row in rows:
        match = re.search(r"(\d[\d,]*) changes", row["metric"])
        if match is None:
            continue
        target = int(match.group(1).replace(",", ""))
        for system, stats in row["systems"].items():
            short = sorted({f"{key} {extra[key]:,}" for extra in stats["extra"]
                            for key in ("stored", "read", "changes")
                            if key in extra and extra[key] < target})
            if short:
                notes.append(f"- {row['metric']} / {system}: {', '.join(short)}")
    return notes


def _cpu_table(rows: list[dict[str, Any]], systems: list[str]) -> list[str]:
    write_rows = [row for row in rows if row["metric"].startswith("writes/s")]
    if not write_rows:
        return []
    lines = ["", "Generator and server CPU during the write loads (percent of one core; "
             "the asyncio generator is the bottleneck near 100 %, wrk near 200 %):", ""]
    lines.append("| Metric | " + " | ".join(f"{s} gen / server" for s in systems) + " |")
    lines.append("|---|" + "---|" * len(systems))
    for row in write_rows:
        cells = []
        for system in systems:
            stats = row["systems"].get(system)
            if stats is None:
                cells.append("-")
                continue
            generator = median([e.get("generator_cpu_percent", 0) for e in stats["extra"]])
            server = median([e.get("server_cpu_percent", 0) for e in stats["extra"]])
            cells.append(f"{generator:.0f} % / {server:.0f} %")
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    return lines


# (goal, issue, metric label prefix, comparison, threshold). comparison "ratio<=" and
# "ratio>=" compare changeagent/etcd; "<=" and ">=" compare changeagent's own median.
GOALS = [
    ("3 members: writes/s at 64 clients >= 1.0x etcd", "6",
     "writes/s, 3 members, 64 clients (wrk)", "ratio>=", 1.0),
    ("3 members: p50 write latency at 1 client <= 1.0x etcd", "6",
     "p50 write latency, 3 members, 1 client (wrk)", "ratio<=", 1.0),
    ("notification p99 <= etcd watch (from the write being sent)", "6",
     "p99 notification latency after the write was sent", "ratio<=", 1.0),
    ("10,000 long-poll consumers all served within 1 s", "6",
     "time until all have the change, 10,000 consumers", "<=", 1000.0),
    ("new member catch-up >= 50,000 changes/s", "6",
     "changes/s caught up by a new member", ">=", 50_000.0),
    ("standalone: >= 5,000 durable writes/s at 64 clients", "2",
     "writes/s, standalone, 64 clients (wrk)", ">=", 5_000.0),
    ("standalone: p50 write latency <= 1 ms at 1 client", "2",
     "p50 write latency, standalone, 1 client (wrk)", "<=", 1.0),
    ("readers: >= 100,000 changes/s (catch-up in pages of 100)", "2, 6",
     "changes/s reading", ">=", 100_000.0),
    ("wake latency p99 <= 10 ms with 1,000 waiters (p99 of the 1,000 consumers)", "2",
     "p99 consumer latency, 1,000 consumers", "<=", 10.0),
    ("(stricter) last of 1,000 waiters served within 10 ms", "2",
     "time until all have the change, 1,000 consumers", "<=", 10.0),
    ("follow() delivers >= 100,000 changes/s from one node", "12",
     "changes/s follow() delivers", ">=", 100_000.0),
    ("mirror writes >= 50,000 changes/s on its first sync", "12",
     "changes/s `changeagent mirror` writes", ">=", 50_000.0),
    ("SSE: p99 from the write's ack to the last of 1,000 consumers <= 20 ms (100 changes/s)",
     "13", "p99 from the write's ack to the last of 1,000 SSE consumers, 100 changes/s",
     "<=", 20.0),
    ("catch-up of 1,000 consumers through nginx >= 10x direct (empty cache)", "13",
     "through nginx / direct, 1,000 consumers, empty cache", ">=", 10.0),
    ("50,000 waiting long-polls held by one node", "13",
     "waiting consumers held at once, target 50,000", ">=", 50_000.0),
    ("all waiting long-polls have one new change within 1 s (at the count held, of 50,000)",
     "13", "time until all waiting consumers have one new change, target 50,000", "<=",
     1000.0),
    ("node RSS <= 600 MB while the long-polls wait (at the count held, of 50,000)", "13",
     "server RSS while the consumers wait, target 50,000", "<=", 600.0),
    ("new member catch-up on 1,000,000 changes >= 100,000 changes/s", "15",
     "changes/s caught up by a new member, 1,000,000 changes", ">=", 100_000.0),
    ("RSS of an empty node <= 30 MB", "15", "RSS of an empty node", "<=", 30.0),
]

# Issue 15's first goal holds for every row of scenario a (each topology, client count
# and generator): (goal, metric label prefix, comparison of changeagent/etcd with 1.0).
WRITE_SCENARIO_PREFIX = "a. durable writes"
EVERY_WRITE_ROW_GOALS = [
    ("every write row (scenario a): writes/s >= 1.0x etcd", "writes/s", "ratio>="),
    ("every write row (scenario a): p50 write latency <= 1.0x etcd", "p50 write latency",
     "ratio<="),
]


def _find(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    return next((row for row in rows if row["metric"].startswith(prefix)), None)


def _goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "Goals (issues 2, 6, 12, 13 and 15), changeagent in this run:", "",
             "| Goal | Issue | Measured | Met |", "|---|---|---|---|"]
    for goal, issue, prefix, comparison, threshold in GOALS:
        row = _find(rows, prefix)
        ours = row["systems"].get("changeagent") if row else None
        measured, met = "not measured", "-"
        if row is not None and ours is not None and comparison.startswith("ratio"):
            ratio = row["ratios"].get("etcd")
            if ratio is not None and not math.isnan(ratio):
                measured = f"{ratio:.2f}x etcd ({_fmt(ours['median'])} {row['unit']})"
                met = "yes" if (ratio >= threshold if comparison == "ratio>=" else
                                ratio <= threshold) else "no"
        elif ours is not None and not math.isnan(ours["median"]):
            value = ours["median"]
            measured = f"{_fmt(value)} {row['unit']}" if row else measured
            met = "yes" if (value >= threshold if comparison == ">=" else
                            value <= threshold) else "no"
        lines.append(f"| {goal} | {issue} | {measured} | {met} |")
    lines.append(_memory_goal(rows))
    lines += [_every_write_row_goal(rows, *goal) for goal in EVERY_WRITE_ROW_GOALS]
    return lines


def _every_write_row_goal(
    rows: list[dict[str, Any]], goal: str, prefix: str, comparison: str
) -> str:
    """How many of scenario a's rows with `prefix` meet the ratio, and the worst one."""
    ratios = [
        (row["metric"], row["ratios"]["etcd"])
        for row in rows
        if row["scenario"].startswith(WRITE_SCENARIO_PREFIX)
        and row["metric"].startswith(prefix)
        and "changeagent" in row["systems"]
        and not math.isnan(row["ratios"].get("etcd", math.nan))
    ]
    if not ratios:
        return f"| {goal} | 15 | not measured | - |"
    higher = comparison == "ratio>="
    met_count = sum(1 for _, ratio in ratios if (ratio >= 1.0 if higher else ratio <= 1.0))
    metric, worst = (min if higher else max)(ratios, key=lambda pair: pair[1])
    where = metric.removeprefix(prefix).lstrip(", ")
    met = "yes" if met_count == len(ratios) else "no"
    return (f"| {goal} | 15 | {met_count} of {len(ratios)} rows; worst {worst:.2f}x "
            f"({where}) | {met} |")


def _memory_goal(rows: list[dict[str, Any]]) -> str:
    goal = "RSS independent of stored changes (restarted node within 50 MB of empty)"
    empty = _find(rows, "RSS of an empty node")
    loaded = _find(rows, "RSS after a restart, holding")
    ours_empty = empty["systems"].get("changeagent") if empty else None
    ours_loaded = loaded["systems"].get("changeagent") if loaded else None
    if not ours_empty or not ours_loaded or loaded is None:
        return f"| {goal} | 2, 6 | not measured | - |"
    growth = ours_loaded["median"] - ours_empty["median"]
    held = loaded["metric"].split("holding ")[-1]
    met = "yes" if growth <= 50 else "no"
    return f"| {goal} | 2, 6 | +{_fmt(growth)} MB holding {held} | {met} |"


def markdown(results: dict[str, Any]) -> str:
    systems = [s for s in SYSTEM_ORDER if s in results["systems"]]
    peers = [s for s in systems if s != "changeagent"]
    lines = [f"Run {results['started']} ({results['mode']} mode, "
             f"{results['settings']['runs']} run(s) per figure: median (min-max)); "
             f"command: `{results['command']}`", ""]
    header = ["Scenario", "Metric", "Unit", "Better", *systems,
              *[f"changeagent/{p}" for p in peers]]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in results["rows"]:
        cells = [row["scenario"], row["metric"], row["unit"], row["better"]]
        cells += [_cell(row["systems"].get(s)) for s in systems]
        cells += [f"{row['ratios'][p]:.2f}x" if p in row["ratios"] else "-" for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    if "changeagent" in systems:
        lines += _goal_lines(results["rows"])
    lines += _cpu_table(results["rows"], systems)
    notes = _short_counts(results["rows"])
    if notes:
        lines += ["", "Fewer changes than the label says (preloads and reads are bounded in "
                  "time):", "", *notes]
    if results["skipped"]:
        lines += ["", "Skipped or failed:", ""]
        lines += [f"- {s['scenario']} / {s['system']}: {s['reason'].splitlines()[0]}"
                  for s in results["skipped"]]
    machine = results["machine"]
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items())]
    return "\n".join(lines) + "\n"


def charts(results: dict[str, Any], samples: dict[str, dict[str, Any]],
           directory: Path, stem: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[Path] = []
    series: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for key, per_system in samples.items():
        if not key.startswith("write_throughput/"):
            continue
        _, topology, generator, clients, _run = key.split("/")
        for system, value in per_system.items():
            points = series.setdefault((system, topology, generator), {})
            points.setdefault(int(clients), []).append(value)
    if series:
        figure, axes = plt.subplots(figsize=(8, 5))
        for (system, topology, generator), points in sorted(series.items()):
            xs = sorted(points)
            axes.plot(xs, [median(points[x]) for x in xs], marker="o",
                      color=COLORS.get(system), linestyle=_style(topology, generator),
                      label=f"{system}, {topology} ({generator})")
        axes.set_xscale("log", base=2)
        ticks = sorted({x for points in series.values() for x in points})
        axes.set_xticks(ticks, [str(x) for x in ticks])
        axes.set_xlabel("concurrent clients")
        axes.set_ylabel("durable writes/s (median)")
        axes.set_title("Durable write throughput against clients")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
        path = directory / f"{stem}-throughput.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    notify = samples.get("notify_latency_ms", {})
    write_cdfs = {k: v for k, v in samples.items() if k.startswith("write_cdf/")}
    if notify or write_cdfs:
        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
        for system, values in sorted(notify.items()):
            ordered = sorted(v for v in values if v > 0)
            left.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))],
                      color=COLORS.get(system), label=system)
        left.set_xscale("log")
        left.set_xlabel("write sent -> waiting consumer has the change (ms)")
        left.set_ylabel("fraction of changes")
        left.set_title("Notification latency CDF")
        left.grid(True, alpha=0.3)
        left.legend(fontsize=8)
        for key, per_system in sorted(write_cdfs.items()):
            _, topology, clients, generator = key.split("/")
            if clients not in ("1", "64"):
                continue
            for system, cdf in sorted(per_system.items()):
                quantiles = sorted(cdf, key=float)
                right.plot([cdf[q] for q in quantiles], [float(q) / 100 for q in quantiles],
                           marker="." if clients == "1" else "x", color=COLORS.get(system),
                           linestyle=_style(topology, generator),
                           label=f"{system}, {topology}, {clients} cl. ({generator})")
        right.set_xscale("log")
        right.set_xlabel("write latency (ms)")
        right.set_title("Durable write latency CDF (last run)")
        right.grid(True, alpha=0.3)
        right.legend(fontsize=7)
        path = directory / f"{stem}-latency-cdf.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


COLORS = {"changeagent": "tab:blue", "base": "tab:gray", "etcd": "tab:orange", "redis": "tab:green"}


def _style(topology: str, generator: str) -> str:
    if topology == "standalone":
        return "-" if generator == "wrk" else "--"
    return "-." if generator == "wrk" else ":"


def write_results(results: dict[str, Any], samples: dict[str, Any], directory: Path,
                  make_charts: bool) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S", time.localtime()) + f"-{results['mode']}"
    json_path = directory / f"{stem}.json"
    document = dict(results, samples=samples)
    json_path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2
                                       | orjson.OPT_SERIALIZE_NUMPY))
    markdown_path = directory / f"{stem}.md"
    markdown_path.write_text(markdown(results))
    paths = {"json": json_path, "markdown": markdown_path}
    (directory / "latest.json").write_bytes(json_path.read_bytes())
    (directory / "latest.md").write_text(markdown_path.read_text())
    if make_charts:
        for index, path in enumerate(charts(results, samples, directory, stem)):
            paths[f"chart{index}"] = path
    return paths


def command_line() -> str:
    return " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]])
