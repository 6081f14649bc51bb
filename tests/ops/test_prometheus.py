"""A real Prometheus (Debian's `prometheus`) scraping a 3-member cluster on loopback,
with the shipped alert rules loaded; and the shipped files checked by `promtool`.

The Prometheus process is started here with a generated config, a free loopback port
and a temporary storage directory, and stopped by pid; the system service is never
used. Without the package the tests are skipped, except under CI (CI=true), where
.ci/run installs it and a missing binary is a failure.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import yaml

from tests.support.cluster import LOOPBACK, Cluster, free_port
from tests.support.server import wait_until

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DEADLINE_S = 90.0  # first scrapes, rule evaluation, on a shared 2-core machine


def _unix_s(rfc3339: str) -> float:
    """Prometheus' RFC 3339 time (nanoseconds, Z) as Unix seconds; fromisoformat keeps
    microseconds, which is finer than an evaluation interval needs."""
    return datetime.fromisoformat(rfc3339).timestamp()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (apt-get install prometheus)")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path


def test_the_shipped_config_and_rules_pass_promtool() -> None:
    promtool = _binary("promtool")
    for command in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        result = subprocess.run(
            [promtool, *command], cwd=DEPLOY, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


# Each alert of deploy/alerts.yml, fed series that must fire it and series that must not.
RULE_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'changeagent_raft_is_leader{{job="a", instance="n1"}}'
        values: '0x20'
      - series: 'changeagent_raft_is_leader{{job="a", instance="n2"}}'
        values: '0x20'
      - series: 'changeagent_raft_is_leader{{job="b", instance="m1"}}'
        values: '1x20'
      - series: 'changeagent_raft_is_leader{{job="b", instance="m2"}}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 2m
        alertname: ChangeagentNoLeader
        exp_alerts:
          - exp_labels: {{severity: critical, job: a}}
            exp_annotations:
              summary: "a has no leader: writes fail"
              description: >-
                No reachable member leads. Usually a majority of voters is down or cut
                off from each other; see ChangeagentDown and each member's /health.
  - interval: 30s
    input_series:
      - series: 'changeagent_raft_commit_index{{job="a", instance="n1"}}'
        values: '5000x10'
      - series: 'changeagent_raft_applied_index{{job="a", instance="n1"}}'
        values: '5000x10'
      - series: 'changeagent_raft_applied_index{{job="a", instance="n2"}}'
        values: '4500x10'
      - series: 'changeagent_raft_applied_index{{job="a", instance="n3"}}'
        values: '2000x10'
      - series: 'changeagent_raft_last_index{{job="a", instance="n1"}}'
        values: '5000x10'
      - series: 'changeagent_peer_match_index{{job="a", instance="n1", peer="x"}}'
        values: '4999x10'
      - series: 'changeagent_peer_match_index{{job="a", instance="n1", peer="y"}}'
        values: '100x10'
      - series: 'changeagent_node_failed{{job="a", instance="n2"}}'
        values: '0 0 1x8'
      - series: 'up{{job="changeagent", instance="n4"}}'
        values: '1 0x9'
    alert_rule_test:
      - eval_time: 4m
        alertname: ChangeagentMemberLagging
        exp_alerts:
          - exp_labels: {{severity: warning, job: a, instance: n3}}
            exp_annotations:
              summary: "n3 is 3000 entries behind its cluster"
              description: >-
                Reads served by this member are stale by that many entries. Check its disk
                (changeagent_storage_fsync_seconds), its CPU, and its link to the leader.
      - eval_time: 4m
        alertname: ChangeagentPeerBehindLeader
        exp_alerts:
          - exp_labels: {{severity: warning, job: a, instance: n1, peer: y}}
            exp_annotations:
              summary: "peer y is 4900 entries behind the leader n1"
              description: >-
                The leader has not been able to replicate to this member (base-36 id, as in
                GET /cluster) for a while: it may be down, partitioned, or too slow.
      - eval_time: 30s
        alertname: ChangeagentNodeFailed
      - eval_time: 2m
        alertname: ChangeagentNodeFailed
        exp_alerts:
          - exp_labels: {{severity: critical, job: a, instance: n2}}
            exp_annotations:
              summary: "n2 failed stop: it takes no writes"
              description: >-
                GET /health on the member names the reason, and its log has it once. It still
                serves reads of what it applied; another member leads. Fix the cause (disk,
                data) and restart it.
      - eval_time: 2m
        alertname: ChangeagentDown
        exp_alerts:
          - exp_labels: {{severity: warning, job: changeagent, instance: n4}}
            exp_annotations:
              summary: "changeagent member n4 (changeagent) cannot be scraped"
              description: >-
                The process is down, unreachable, or refuses the scrape's credentials.
                A cluster of 3 keeps writing with one member down, not with two.
"""


def test_each_alert_fires_on_the_series_it_is_for(tmp_path: Path) -> None:
    promtool = _binary("promtool")
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(RULE_TESTS.format(rules=DEPLOY / "alerts.yml"))
    result = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


class PrometheusServer:
    """One `prometheus` process on a free loopback port; `stop()` ends it by pid."""

    def __init__(self, binary: str, directory: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.directory = directory
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(DEPLOY / "alerts.yml")]
        config["scrape_configs"][0]["static_configs"] = [{"targets": targets}]
        config_path = directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, **parameters: str) -> Any:
        """GET an API path; None while Prometheus does not answer (starting up)."""
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            query = f"?{urlencode(parameters)}" if parameters else ""
            connection.request("GET", path + query)
            answer = connection.getresponse()
            body = answer.read()
            return orjson.loads(body) if answer.status == 200 else None
        except OSError:
            if self.process.poll() is not None:
                raise AssertionError("prometheus exited:\n" + self.log_path.read_text()) from None
            return None
        finally:
            connection.close()

    def query(self, expression: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expression)
        return [] if answer is None else list(answer["data"]["result"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    members = Cluster(tmp_path / "cluster", 3)
    try:
        yield members.start().form()
    finally:
        members.kill()


@pytest.fixture
def prometheus(tmp_path: Path, cluster: Cluster) -> Iterator[PrometheusServer]:
    binary = _binary("prometheus")
    directory = tmp_path / "prometheus"
    directory.mkdir()
    targets = [f"{LOOPBACK}:{node.port}" for node in cluster.nodes]
    server = PrometheusServer(binary, directory, targets)
    try:
        yield server
    finally:
        server.stop()


def test_prometheus_scrapes_every_member_and_sees_one_leader(
    cluster: Cluster, prometheus: PrometheusServer
) -> None:
    for number in range(20):
        assert cluster.leader().post_change({"data": {"n": number}}).status == 200

    def targets_up() -> bool:
        answer = prometheus.get("/api/v1/targets")
        if answer is None:
            return False
        active = answer["data"]["activeTargets"]
        return len(active) == 3 and all(target["health"] == "up" for target in active)

    wait_until(targets_up, DEADLINE_S, 0.2)

    def one_leader() -> bool:
        result = prometheus.query("sum(changeagent_raft_is_leader)")
        return len(result) == 1 and float(result[0]["value"][1]) == 1

    wait_until(one_leader, DEADLINE_S, 0.2)
    # The leader reports both peers' match index, by base-36 id.
    leader = cluster.leader()
    peer_ids = {node.node_id() for node in cluster.nodes if node is not leader}

    def peers_reported() -> bool:
        series = prometheus.query("changeagent_peer_match_index")
        return {item["metric"]["peer"] for item in series} == peer_ids

    wait_until(peers_reported, DEADLINE_S, 0.2)
    # Every member has applied what the leader had committed after the writes.
    committed = leader.raft()["committedIndex"]

    applied_at_s = 0.0  # Prometheus' clock when its samples showed all three applied

    def all_applied() -> bool:
        nonlocal applied_at_s
        result = prometheus.query(f"count(changeagent_raft_applied_index >= {committed})")
        if not result or float(result[0]["value"][1]) != 3:
            return False
        applied_at_s = float(result[0]["value"][0])
        return True

    wait_until(all_applied, DEADLINE_S, 0.2)

    # Alerts are what the last rule evaluation saw. One that ran before the leader's first
    # scrape landed sees no leader (a pending ChangeagentNoLeader until the next one), so
    # wait for an evaluation that started after the samples above were queryable.
    def rules_evaluated() -> bool:
        answer = prometheus.get("/api/v1/rules")
        if answer is None:
            return False
        rules = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
        return len(rules) == 6 and all(
            rule["health"] == "ok" and _unix_s(rule["lastEvaluation"]) > applied_at_s
            for rule in rules
        )

    wait_until(rules_evaluated, DEADLINE_S, 0.2)
    # A healthy cluster raises no alert, not even a pending one (a slow fsync on this
    # shared VM is weather, not a failure of the cluster: left out).
    alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
    assert [a for a in alerts if a["labels"]["alertname"] != "ChangeagentSlowFsync"] == []
