"""Health, config, cluster, diagnostics, prefix and the command line."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.support.server import ServerProcess


def test_health_mark_down_and_up(server: ServerProcess) -> None:
    """The update itself succeeds (200, so `curl -f` scripts work) and says the new
    state; only GET /health answers 503 while the node is marked down."""
    ok = server.request("GET", "/health")
    assert (ok.status, ok.text) == (200, "ok")
    assert ok.headers["Content-Type"].startswith("text/plain")
    marked_down = server.form("PUT", "/health", {"up": "false"})
    assert marked_down.status == 200, marked_down.body
    assert marked_down.headers["Content-Type"].startswith("application/json")
    assert marked_down.json() == {"up": False, "health": "marked down"}
    down = server.request("GET", "/health")
    assert (down.status, down.text) == (503, "marked down")
    marked_up = server.form("POST", "/health", {"up": "true"})
    assert (marked_up.status, marked_up.json()) == (200, {"up": True, "health": "ok"})
    assert server.request("GET", "/health").status == 200


def test_health_rejects_bad_form(server: ServerProcess) -> None:
    response = server.form("PUT", "/health", {"up": "maybe"})
    assert response.status == 400 and "up=true" in response.json()["error"]


def test_root_and_diagnostics_links_are_absolute_and_followable(server: ServerProcess) -> None:
    """As ChangeAgent's: `scheme://Host` + path, which clients follow with a plain GET."""
    origin = f"http://127.0.0.1:{server.port}"
    links = server.request("GET", "/", headers={"Host": f"127.0.0.1:{server.port}"}).json()
    assert {"changes", "cluster", "config", "diagnostics", "health"} <= set(links)
    assert links["changes"] == f"{origin}/changes"
    diagnostics = server.request("GET", links["diagnostics"].removeprefix(origin)).json()
    assert diagnostics["raft"] == f"{origin}/diagnostics/raft"
    assert diagnostics.pop("version")  # the one value that is not a link
    for link in [*links.values(), *diagnostics.values()]:
        assert link.startswith(origin + "/"), link
        assert server.request("GET", link.removeprefix(origin)).status == 200, link


def test_links_follow_forwarded_headers_and_prefix(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("-P", "/ca")
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com:8443"}
    links = server.request("GET", "/ca", headers=proxied).json()
    assert links["changes"] == "https://api.example.com:8443/ca/changes"
    several_proxies = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "[::1]:9, b"}
    links = server.request("GET", "/ca/diagnostics", headers=several_proxies).json()
    assert links["id"] == "https://[::1]:9/ca/diagnostics/id"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Host": "evil.example/<script>", "X-Forwarded-Proto": "javascript"},
        {"X-Forwarded-Host": "a@evil.example", "X-Forwarded-Proto": "https:"},
        {"X-Forwarded-Host": "evil.example:99999", "X-Forwarded-Proto": ""},
        {"X-Forwarded-Host": "evil example", "Host": "also bad\u00e9"},
    ],
)
def test_bad_forwarded_headers_fall_back_to_the_request(
    server: ServerProcess, headers: dict[str, str]
) -> None:
    links = server.request("GET", "/", headers=headers).json()
    assert links["health"] == f"http://127.0.0.1:{server.port}/health", links


def test_config_get_put(tmp_path: Path, make_server) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "settings.yaml"
    server = make_server("-f", str(path))
    assert path.exists(), "defaults are written to a missing file"
    current = yaml.safe_load(server.request("GET", "/config").text)
    assert current["minPurgeRecords"] == 0 and current["electionTimeout"] == "1s"
    put = server.request(
        "PUT",
        "/config",
        "minPurgeRecords: 5\nelectionTimeout: 4s\n",
        {"Content-Type": "application/yaml"},
    )
    assert put.status == 200, put.body
    assert put.headers["Content-Type"].startswith("application/yaml")
    updated = yaml.safe_load(server.request("GET", "/config").text)
    assert updated["minPurgeRecords"] == 5 and updated["electionTimeout"] == "4s"
    assert updated["heartbeatTimeout"] == "100ms", "durations missing from a PUT keep their value"
    assert yaml.safe_load(path.read_text())["minPurgeRecords"] == 5


def test_config_put_errors(server: ServerProcess) -> None:
    wrong_type = server.request(
        "PUT", "/config", "minPurgeRecords: 1", {"Content-Type": "text/plain"}
    )
    assert wrong_type.status == 415
    invalid = server.request(
        "PUT",
        "/config",
        "electionTimeout: 150ms\nheartbeatTimeout: 100ms",
        {"Content-Type": "text/yaml"},
    )
    assert invalid.status == 400 and "twice" in invalid.json()["error"]
    garbage = server.request("PUT", "/config", "a: [", {"Content-Type": "text/yaml"})
    assert garbage.status == 400


def test_standalone_cluster_and_diagnostics(server: ServerProcess) -> None:
    cluster = server.request("GET", "/cluster").json()
    assert cluster["clusterId"] == "0" and cluster["members"] == {}
    assert server.request("GET", "/cluster/members").json() == {}
    assert server.request("GET", "/diagnostics/raft/state").text == "Standalone"
    node_id = server.request("GET", "/diagnostics/id").text
    assert node_id.isalnum() and node_id != "0"
    status = server.request("GET", "/diagnostics/raft").json()
    assert status["id"] == node_id and status["state"] == "Standalone"
    assert "Thread" in server.request("GET", "/diagnostics/stack").text
    memory = server.request("GET", "/diagnostics/memory").json()
    assert memory["rssBytes"] > 0
    # Once serving, start-up's objects are frozen and the youngest generation is
    # collected in larger rounds (server.tune_garbage_collector).
    assert memory["gcThresholds"][0] == 10_000 and memory["gcFrozenObjects"] > 10_000
    assert set(server.request("GET", "/diagnostics").json()) >= {"id", "raft", "stack", "memory"}


@pytest.mark.parametrize("text", ["1_0", "+1", "1y2p0ij32e8e8", "not-base36"])
def test_member_ids_must_be_base_36_ids(server: ServerProcess, text: str) -> None:
    answer = server.request("GET", f"/cluster/members/{text}")
    assert answer.status == 400 and "base-36" in answer.json()["error"], answer.body


def test_node_id_survives_restart(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "d").start()
    node_id = first.request("GET", "/diagnostics/id").text
    assert first.stop() == 0
    second = ServerProcess(tmp_path / "d").start()
    try:
        assert second.request("GET", "/diagnostics/id").text == node_id
    finally:
        second.kill()


def test_prefix_puts_every_path_under_it(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("-P", "/ca")
    assert server.request("GET", "/ca/health").status == 200
    assert server.request("GET", "/health").status == 404
    posted = server.request(
        "POST", "/ca/changes", b'{"data":1}', {"Content-Type": "application/json"}
    )
    assert posted.status == 200
    assert server.request("GET", "/ca/changes").json()["changes"][0]["data"] == 1
    root = server.request("GET", "/ca", headers={"Host": "localhost:1"}).json()
    assert root["changes"] == "http://localhost:1/ca/changes"


def test_openapi_document_served(server: ServerProcess) -> None:
    document = server.request("GET", "/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/changes" in document["paths"]
    # No -pw and no -cas: nothing to declare.
    assert "security" not in document and "securitySchemes" not in document["components"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-p", "70000"], "port"),
        (["-P", "/trailing/"], "prefix"),
        (["-P", "noslash"], "prefix"),
        (["--max-limit", "0"], "--max-limit"),
        (["--max-purge-entries", "0"], "--max-purge-entries"),
        (["-p", "abc"], "invalid int"),
        (["--no-such-flag"], "unrecognized"),
    ],
)
def test_bad_flags_exit_nonzero_with_reason(arguments: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "changeagent", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_invalid_config_file_exits_nonzero(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("heartbeatTimeout: 1ms\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "changeagent",
            "-p",
            "0",
            "-d",
            str(tmp_path / "d"),
            "-f",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "heartbeatTimeout" in result.stderr


def test_help_lists_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "changeagent", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for flag in (
        "-p",
        "-d",
        "-f",
        "-P",
        "-v",
        "-logtostderr",
        "--max-body-bytes",
        "--max-purge-entries",
    ):
        assert flag in result.stdout
    # The README's form is there too.
    assert "usage: changeagent [serve] [options]" in result.stdout
    assert "changeagent serve --port 9000 --data-dir ./data" in result.stdout


def test_version_on_the_command_line_and_the_api(server: ServerProcess) -> None:
    installed = metadata.version("changeagent")
    result = subprocess.run(
        [sys.executable, "-m", "changeagent", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, f"changeagent {installed}\n")
    answer = server.request("GET", "/version")
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {"version": installed}
    assert server.request("GET", "/diagnostics").json()["version"] == installed
    document = server.request("GET", "/openapi.json").json()
    assert document["info"]["version"] == installed
    assert "/version" in document["paths"]


def test_serve_subcommand_with_long_options(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path / "d")
    process.arguments = []
    command_check = subprocess.run(
        [sys.executable, "-m", "changeagent", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert command_check.returncode == 0 and "--data-dir" in command_check.stdout


def test_listening_lines_are_info_and_reach_stderr_by_default(make_server) -> None:  # type: ignore[no-untyped-def]
    """Scripts and tests read these lines for the ports; they are routine, so INFO,
    which the default verbosity still writes to stderr."""
    server = make_server("-cp", "0")
    log = "".join(server.log)
    assert (
        f"INFO changeagent.server: changeagent listening on http://127.0.0.1:{server.port}" in log
    )
    assert "INFO changeagent.peers: changeagent cluster port listening on tcp://127.0.0.1:" in log
    assert not [line for line in server.log if "WARNING" in line and "listening" in line]


def test_data_directory_and_files_are_private(server: ServerProcess) -> None:
    server.post_change({"data": 1})
    assert server.data_dir.stat().st_mode & 0o777 == 0o700
    for path in server.data_dir.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
