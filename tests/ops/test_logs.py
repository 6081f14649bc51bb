"""Logs of real nodes: `--log-format json` (one object per line, base-36 ids,
structured fields), `--access-log`, the text default, and the flags as the
README's Command line table lists them."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from changeagent.cli.serve import build_parser
from changeagent.logs import JsonFormatter, set_log_identity
from tests.ops.conftest import USER, StartServer, basic
from tests.support.server import ServerProcess, wait_until

REPO = Path(__file__).resolve().parents[2]
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
BASE36 = re.compile(r"^[0-9a-z]+$")
STARTED = re.compile(r"^changeagent \S+: node [0-9a-z]+, cluster [0-9a-z]+, data in ")


def records(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line the node wrote so far, each parsed as one JSON object."""
    parsed = []
    for line in list(server.log):
        document = orjson.loads(line)
        assert isinstance(document, dict), line
        parsed.append(document)
    return parsed


def test_json_lines_carry_time_level_logger_and_base36_ids(
    start_server: StartServer, password_file: Path
) -> None:
    server = start_server("--log-format", "json", "-pw", str(password_file))
    node_id = server.request("GET", "/diagnostics/id", headers=basic()).text
    # Forming a cluster of one gives the node a cluster id: later lines carry it.
    form = {"Content-Type": "application/x-www-form-urlencoded", **basic()}
    address = urlencode({"address": f"127.0.0.1:{server.port}"})
    answer = server.request("POST", "/cluster/members", address, form)
    assert answer.status == 200, answer.body
    cluster_id = server.request("GET", "/cluster", headers=basic()).json()["clusterId"]
    assert cluster_id != "0"
    wait_until(lambda: any("created cluster" in line for line in server.log), 10)
    assert server.stop() == 0
    lines = records(server)
    # The password file is read before storage opens: the ids are known from the
    # start-up line on.
    start = next(n for n, d in enumerate(lines) if STARTED.match(d["message"]))
    assert lines[start]["data_dir"] == str(server.data_dir)
    for number, document in enumerate(lines):
        assert {"time", "level", "logger", "message"} <= set(document)
        assert TIME.match(document["time"]), document
        assert document["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if number >= start:
            assert document["node"] == node_id
            assert BASE36.match(document["cluster"])
    messages = [document["message"] for document in lines]
    listening = next(d for d in lines if "listening on" in d["message"])
    assert listening["level"] == "INFO"
    assert listening["url"] == f"http://127.0.0.1:{server.port}"  # a structured field
    assert listening["cluster"] == "0"  # standalone when it started
    created = next(d for d in lines if d["message"].startswith("created cluster"))
    assert created["cluster"] == cluster_id
    assert lines[-1]["message"] == "changeagent stopped"
    assert lines[-1]["cluster"] == cluster_id
    leader = next(d for d in lines if d["message"].startswith("raft: LEADER"))
    assert (leader["role"], leader["leader"]) == ("LEADER", node_id)
    # No id in any message is written in decimal: every long digit run is base 36.
    assert not [m for m in messages if re.search(rf"\b{int(node_id, 36)}\b", m)]


def test_access_log_has_method_route_status_duration_bytes_and_user(
    start_server: StartServer, password_file: Path
) -> None:
    server = start_server("--log-format", "json", "--access-log", "-pw", str(password_file))
    assert server.post_change({"data": {"n": 1}}, headers=basic()).status == 200
    assert server.request("GET", "/changes/2", headers=basic()).status == 200
    assert server.request("GET", "/changes/99").status == 401
    wait_until(lambda: len(_access(server)) >= 3, 10)
    posted, read, refused = _access(server)[:3]
    assert (posted["method"], posted["route"], posted["status"]) == ("POST", "/changes", 200)
    assert (read["route"], read["path"], read["status"]) == ("/changes/{id}", "/changes/2", 200)
    assert read["user"] == posted["user"] == USER
    assert read["bytes"] == len(server.request("GET", "/changes/2", headers=basic()).body)
    assert read["duration_ms"] >= 0 and isinstance(read["duration_ms"], float)
    assert (refused["user"], refused["status"], refused["route"]) == ("-", 401, "/changes/{id}")
    assert read["message"].startswith(f'127.0.0.1 {USER} "GET /changes/2" 200 ')


def _access(server: ServerProcess) -> list[dict[str, Any]]:
    return [d for d in records(server) if d["logger"] == "changeagent.access"]


def test_text_is_the_default_and_no_access_log_unless_asked(start_server: StartServer) -> None:
    server = start_server()
    assert server.post_change({"data": {"n": 1}}).status == 200
    node_id = server.request("GET", "/diagnostics/id").text
    assert server.stop() == 0
    text = "".join(server.log)
    assert not text.lstrip().startswith("{")
    assert re.search(
        rf" INFO changeagent\.server: changeagent listening on http://127\.0\.0\.1:{server.port}\n",
        text,
    )
    assert f"node {node_id}, cluster 0, data in " in text
    assert "changeagent.access" not in text


def test_a_text_node_logs_requests_with_access_log(start_server: StartServer) -> None:
    server = start_server("--access-log")
    assert server.request("GET", "/changes/5").status == 404
    wait_until(lambda: any('"GET /changes/5" 404 ' in line for line in server.log), 10)
    line = next(line for line in server.log if '"GET /changes/5"' in line)
    assert " INFO changeagent.access: 127.0.0.1 - " in line


def test_an_unknown_log_format_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "changeagent", "--log-format", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--log-format" in result.stderr


def test_json_formatter_writes_fields_and_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("changeagent.test").makeRecord(
            "changeagent.test",
            logging.ERROR,
            __file__,
            1,
            "failed %s",
            ("twice",),
            sys.exc_info(),
            extra={"peer": "z", "count": 3},
        )
    record.message = "not this one"  # what a formatter may have left: the message wins
    set_log_identity(lambda: (35, 36 * 36))
    try:
        line = JsonFormatter().format(record)
    finally:
        set_log_identity(None)
    assert "\n" not in line
    document = orjson.loads(line)
    assert document["message"] == "failed twice"  # the standard field wins
    assert (document["node"], document["cluster"]) == ("z", "100")
    assert (document["peer"], document["count"]) == ("z", 3)
    assert document["level"] == "ERROR"
    assert "ValueError: boom" in document["exception"]


def test_every_long_flag_is_in_the_readme_table_and_the_other_way_round() -> None:
    parser = build_parser()
    flags = {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    } - {"--help", "--version"}
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2:
            match = re.match(r"`(--[a-z0-9-]+)", cells[1])
            if match:
                listed.add(match.group(1))
    assert flags == listed
    help_text = parser.format_help()
    assert "--log-format {text,json}" in help_text
    assert "--access-log" in help_text
