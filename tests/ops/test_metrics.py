"""GET /metrics on real nodes: the names issue 14 lists, the standard process
metrics, auth like the rest of the API, and bounded label values."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from changeagent.metrics import RequestCounts, StorageCommits
from tests.ops.conftest import StartServer, basic
from tests.support.server import Response, ServerProcess, wait_until

REQUIRED = {
    "changeagent_raft_term": "gauge",
    "changeagent_raft_commit_index": "gauge",
    "changeagent_raft_applied_index": "gauge",
    "changeagent_raft_is_leader": "gauge",
    "changeagent_raft_leader_changes": "counter",
    "changeagent_proposals_committed": "counter",
    "changeagent_proposals_failed": "counter",
    "changeagent_proposals_at_once": "counter",
    "changeagent_storage_fsync_seconds": "histogram",
    "changeagent_storage_batch_entries": "histogram",
    "changeagent_http_requests": "counter",
    "changeagent_http_request_duration_seconds": "histogram",
    "changeagent_long_polls_waiting": "gauge",
    "changeagent_peer_match_index": "gauge",
    "changeagent_changes_stored": "gauge",
    "changeagent_purged_changes": "counter",
    "changeagent_node_failed": "gauge",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
}


def scrape(server: ServerProcess, path: str = "/metrics", **headers: str) -> dict[str, Any]:
    """name -> family, from the text format."""
    answer = server.request("GET", path, headers=headers)
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    """The one sample named `name` with exactly these labels."""
    family_name = name
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        if family_name not in families:
            family_name = name.removesuffix(suffix)
    matches = [
        sample.value
        for sample in families[family_name].samples
        if sample.name == name and sample.labels == labels
    ]
    assert len(matches) == 1, (name, labels, families[family_name].samples)
    return float(matches[0])


def route_labels(families: dict[str, Any]) -> set[str]:
    return {sample.labels["route"] for sample in families["changeagent_http_requests"].samples}


def test_every_listed_metric_is_exposed_with_its_type(start_server: StartServer) -> None:
    server = start_server()
    assert server.post_change({"data": {"n": 1}}).status == 200
    families = scrape(server)
    assert {name: families[name].type for name in REQUIRED if name in families} == REQUIRED
    assert value(families, "changeagent_raft_is_leader") == 1  # standalone leads itself
    assert value(families, "changeagent_raft_leader_changes_total") == 1
    assert value(families, "changeagent_proposals_committed_total") >= 1
    assert value(families, "changeagent_proposals_failed_total") == 0
    applied = value(families, "changeagent_raft_applied_index")
    assert applied == value(families, "changeagent_raft_commit_index") >= 2
    assert value(families, "changeagent_changes_stored") == applied  # no purge yet
    assert value(families, "changeagent_storage_fsync_seconds_count") >= 1
    assert value(families, "changeagent_storage_batch_entries_sum") >= 2
    node_id = server.request("GET", "/diagnostics/id").text
    info = families["changeagent_node_info"].samples[0].labels
    assert (info["node"], info["cluster"]) == (node_id, "0")
    # A standalone node has no peers: the family is there, with no sample.
    assert families["changeagent_peer_match_index"].samples == []


def test_requests_are_counted_by_route_never_by_raw_path(start_server: StartServer) -> None:
    server = start_server()
    for index in ("123", "456", "2"):
        server.request("GET", f"/changes/{index}")
    server.request("GET", "/no/such/path")
    server.request("GET", "/another/unknown")
    server.request("PROPFIND", "/changes")  # any token is a method: they share one label
    families = scrape(server)
    routes = route_labels(families)
    assert "/changes/{id}" in routes
    assert not any(route.startswith("/changes/") and route != "/changes/{id}" for route in routes)
    assert not {"/no/such/path", "/another/unknown"} & routes
    # Three different ids, no change stored yet: one series.
    assert value(families, "changeagent_http_requests_total", **_labels("/changes/{id}", 404)) == 3
    assert value(families, "changeagent_http_requests_total", **_labels("(unmatched)", 404)) == 2
    methods = {s.labels["method"] for s in families["changeagent_http_requests"].samples}
    assert "PROPFIND" not in methods
    assert "other" in methods
    durations = families["changeagent_http_request_duration_seconds"]
    assert {s.labels["route"] for s in durations.samples} == routes


def _labels(route: str, code: int, method: str = "GET") -> dict[str, str]:
    return {"route": route, "method": method, "code": str(code)}


def test_route_labels_leave_out_the_prefix(start_server: StartServer) -> None:
    server = start_server("-P", "/ca")
    assert server.request("GET", "/ca/changes/7").status == 404
    assert server.request("GET", "/ca").status == 200
    families = scrape(server, "/ca/metrics")
    assert {"/changes/{id}", "/"} <= route_labels(families)
    assert not any(route.startswith("/ca") for route in route_labels(families))


def test_metrics_need_credentials_like_the_api(
    start_server: StartServer, password_file: Path
) -> None:
    server = start_server("-pw", str(password_file))
    refused = server.request("GET", "/metrics")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="changeagent"'
    assert server.request("GET", "/metrics", headers=basic(password="wrong")).status == 401
    assert server.request("GET", "/health").status == 200  # still exempt
    families = scrape(server, **basic())
    assert value(families, "changeagent_http_requests_total", **_labels("/metrics", 401)) == 2


def test_long_polls_waiting_is_read_at_scrape_time(start_server: StartServer) -> None:
    server = start_server()
    assert value(scrape(server), "changeagent_long_polls_waiting") == 0
    answers: list[Response] = []
    poll = threading.Thread(
        target=lambda: answers.append(server.get_changes(since=1, block=30)), daemon=True
    )
    poll.start()  # a fresh node holds only its no-op (_id 1): the poll waits
    wait_until(lambda: value(scrape(server), "changeagent_long_polls_waiting") == 1, 10)
    assert server.post_change({"data": {"n": 1}}).status == 200
    poll.join(30)
    assert answers and answers[0].status == 200
    assert value(scrape(server), "changeagent_long_polls_waiting") == 0


def test_openmetrics_when_asked(start_server: StartServer) -> None:
    server = start_server()
    answer = server.request(
        "GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")


def test_malformed_requests_are_in_the_access_log_not_in_the_metrics(
    start_server: StartServer,
) -> None:
    """aiohttp answers them 400 before any middleware runs (see api/observe.py)."""
    server = start_server("--access-log")
    for request_line in (b"BREW /changes HTTP/1.1", b"GET /x\x01y HTTP/1.1"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(request_line + b"\r\nHost: x\r\n\r\n")
            assert connection.recv(100).startswith(b"HTTP/1.0 400")
    families = scrape(server)
    codes = {s.labels["code"] for s in families["changeagent_http_requests"].samples}
    assert "400" not in codes
    wait_until(lambda: sum('" 400 ' in line for line in server.log) == 2, 10)
    assert not [line for line in server.log if "could not log" in line]


def test_redirects_are_counted_with_their_status(start_server: StartServer) -> None:
    server = start_server()
    server.request("GET", "/ui")  # answered by raising a redirect, past the error middleware
    statuses = {
        s.labels["code"]
        for s in scrape(server)["changeagent_http_requests"].samples
        if s.labels["route"] == "/ui"
    }
    assert statuses and all(code.startswith("3") for code in statuses), statuses


def test_request_counts_make_cumulative_buckets_per_route() -> None:
    counts = RequestCounts()
    counts.observe("/changes", "POST", 200, 0.0005)  # on a bound: counted in it (le)
    counts.observe("/changes", "POST", 200, 0.003)
    counts.observe("/changes", "GET", 404, 1000.0)  # above every bound: only +Inf
    counts.observe("/changes", "MKCOL", 405, 0.0001)
    families = {family.name: family for family in counts.collect()}
    requests = {
        (s.labels["method"], s.labels["code"]): s.value
        for s in families["changeagent_http_requests"].samples
    }
    assert requests == {("POST", "200"): 2, ("GET", "404"): 1, ("other", "405"): 1}
    samples = families["changeagent_http_request_duration_seconds"].samples
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert (buckets["0.0005"], buckets["0.001"], buckets["0.005"]) == (2, 2, 3)
    assert (buckets["300.0"], buckets["+Inf"]) == (3, 4)
    totals = {s.name.rsplit("_", 1)[1]: s.value for s in samples if "le" not in s.labels}
    assert totals["count"] == 4
    assert abs(totals["sum"] - (0.0005 + 0.003 + 1000.0 + 0.0001)) < 1e-9


def test_storage_commits_make_the_fsync_and_batch_histograms() -> None:
    commits = StorageCommits()
    commits.observe(0.0007, 30)
    commits.observe(0.02, 1)
    commits.observe(0.003, 0)  # a transaction without entries: an fsync, no batch
    families = {family.name: family for family in commits.collect()}
    fsync = {s.name.rsplit("_", 1)[1] + s.labels.get("le", ""): s.value
             for s in families["changeagent_storage_fsync_seconds"].samples}  # fmt: skip
    assert (fsync["bucket0.001"], fsync["bucket0.005"], fsync["bucket+Inf"]) == (1, 2, 3)
    assert fsync["count"] == 3 and abs(fsync["sum"] - 0.0237) < 1e-9
    batch = {s.name.rsplit("_", 1)[1] + s.labels.get("le", ""): s.value
             for s in families["changeagent_storage_batch_entries"].samples}  # fmt: skip
    assert (batch["bucket1.0"], batch["bucket32.0"], batch["count"], batch["sum"]) == (1, 2, 2, 31)
