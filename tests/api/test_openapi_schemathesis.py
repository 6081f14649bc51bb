"""Schemathesis against the served OpenAPI document: no server errors, no schema violations.

Every operation runs with every check, with two documented exceptions:
- `/health` answers 503 by contract when marked down: it runs without the 5xx check.
- `/config` has cross-field rules (electionTimeout >= 2 x heartbeatTimeout, heartbeat
  >= 100ms) that JSON Schema cannot express, and POST /cluster/members refuses
  addresses that name no joinable node: they run without the check that every
  schema-valid request is accepted.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

# /health answers 503 when marked down, by contract.
FIVE_HUNDREDS_BY_CONTRACT = r"^/health$"
# Schema-valid input that is still refused: settings that break a rule across fields
# (election >= 2 x heartbeat), and member addresses that name no joinable node.
CROSS_FIELD_RULES = r"^/(config|cluster/members)$"
EXCEPTIONS = r"^/(health|cluster/members|config)$"


def schemathesis(server: ServerProcess, *arguments: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("schemathesis", path=str(Path(__file__).parents[2] / ".venv/bin"))
    command = [
        executable or "schemathesis",
        "run",
        f"http://127.0.0.1:{server.port}/openapi.json",
        "--max-examples",
        "40",
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "1",
        "--seed",
        "20261121",
        "--request-timeout",
        "10",
        # Strings must be encodable: lone UTF-16 surrogates are not Unicode text and the
        # server rightly refuses them (400), which is not a schema violation.
        "--generation-codec",
        "utf-8",
        "--generation-database",
        "none",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    data_dir = tmp_path_factory.mktemp("schemathesis") / "data"
    arguments = ["--max-block", "0.2", "--max-limit", "500", "--stream-max-age", "0.5"]
    server = ServerProcess(data_dir, arguments).start()
    yield server
    server.kill()


def test_no_server_errors_and_no_schema_violations(fuzzed_server: ServerProcess) -> None:
    result = schemathesis(fuzzed_server, "--checks", "all", "--exclude-path-regex", EXCEPTIONS)
    assert result.returncode == 0, result.stdout[-6000:]


def test_health_and_membership_conform(fuzzed_server: ServerProcess) -> None:
    result = schemathesis(
        fuzzed_server,
        "--checks",
        "all",
        "--exclude-checks",
        "not_a_server_error",
        "--include-path-regex",
        FIVE_HUNDREDS_BY_CONTRACT,
    )
    assert result.returncode == 0, result.stdout[-6000:]


def test_config_conforms(fuzzed_server: ServerProcess) -> None:
    result = schemathesis(
        fuzzed_server,
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--include-path-regex",
        CROSS_FIELD_RULES,
    )
    assert result.returncode == 0, result.stdout[-6000:]
