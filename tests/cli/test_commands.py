"""The client subcommands as a user runs them: output, exit status, one-line errors."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson

from tests.cli.support import cli_environment, one_error_line, run_cli
from tests.security.support import htpasswd
from tests.support.cluster import free_port
from tests.support.server import ServerProcess


def test_post_get_changes_print_the_server_shapes(url: str) -> None:
    tag = uuid.uuid4().hex
    posted = run_cli("post", "--tag", tag, "--type", "3", '{"x": 1}', servers=url)
    assert posted.returncode == 0, posted.stderr
    change = orjson.loads(posted.stdout)
    assert (change["data"], change["tags"], change["type"]) == ({"x": 1}, [tag], 3)
    assert posted.stdout.count("\n") == 1  # compact: one line

    got = run_cli("get", str(change["_id"]), servers=url)
    assert orjson.loads(got.stdout) == change

    page = run_cli("changes", "--since", str(change["_id"] - 1), "--tag", tag, servers=url)
    assert orjson.loads(page.stdout) == {"changes": [change], "atStart": True, "atEnd": True}

    pretty = run_cli("get", str(change["_id"]), "--pretty", servers=url)
    assert pretty.stdout.count("\n") > 3 and orjson.loads(pretty.stdout) == change


def test_post_reads_stdin_and_keeps_one_key_stored_once(url: str) -> None:
    key = uuid.uuid4().hex
    first = run_cli("post", "--key", key, "-", stdin="[1, 2, 3]\n", servers=url)
    again = run_cli("post", "--key", key, "-", stdin="[1, 2, 3]\n", servers=url)
    assert first.returncode == again.returncode == 0
    assert orjson.loads(first.stdout) == orjson.loads(again.stdout)
    assert orjson.loads(first.stdout)["data"] == [1, 2, 3]


def test_connection_options_may_come_before_the_command(url: str) -> None:
    posted = orjson.loads(run_cli("post", '"before"', servers=url).stdout)
    result = run_cli("--server", url, "get", str(posted["_id"]), environment=cli_environment())
    assert result.returncode == 0 and orjson.loads(result.stdout) == posted


def test_bad_input_is_one_line_and_status_2(url: str) -> None:
    malformed = run_cli("post", "{not json", servers=url)
    assert malformed.returncode == 2 and "not valid JSON" in one_error_line(malformed)
    assert run_cli("post", servers=url).returncode == 2  # no JSON argument at all
    missing_target = run_cli("cluster", "add", servers=url)
    assert missing_target.returncode == 2
    assert "address" in one_error_line(missing_target)
    bad_url = run_cli("get", "1", "--server", "localhost:8080")
    assert bad_url.returncode == 2 and "http://" in one_error_line(bad_url)
    half_tls = run_cli("get", "1", "--cert", "c.pem", servers=url)
    assert half_tls.returncode == 2 and "--cert-key" in one_error_line(half_tls)


def test_server_errors_are_one_line_and_status_1(url: str) -> None:
    missing = run_cli("get", "999999999", servers=url)
    assert missing.returncode == 1 and "404" in one_error_line(missing)
    refused = run_cli("get", "1", "--timeout", "1", servers=f"http://127.0.0.1:{free_port()}")
    assert refused.returncode == 1
    assert "no server answered" in one_error_line(refused)


def test_config_get_set_round_trip(url: str, tmp_path: Path) -> None:
    shown = run_cli("config", servers=url)
    assert shown.returncode == 0 and "electionTimeout" in shown.stdout
    settings = tmp_path / "settings.yaml"
    settings.write_text(shown.stdout.replace("minPurgeRecords: 0", "minPurgeRecords: 7"))
    applied = run_cli("config", "set", str(settings), servers=url)
    assert applied.returncode == 0 and "minPurgeRecords: 7" in applied.stdout
    assert "minPurgeRecords: 7" in run_cli("config", "get", servers=url).stdout
    restored = run_cli("config", "set", "-", stdin=shown.stdout, servers=url)
    assert "minPurgeRecords: 0" in restored.stdout
    unreadable = run_cli("config", "set", str(tmp_path / "absent.yaml"), servers=url)
    assert unreadable.returncode == 2 and "cannot read" in one_error_line(unreadable)


def test_health_lists_each_server_and_marks_one(url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    healthy = run_cli("health", servers=url)
    assert (healthy.returncode, healthy.stdout) == (0, f"{url}: ok\n")
    mixed = run_cli("health", "--timeout", "1", servers=f"{url},{dead}")
    assert mixed.returncode == 1
    assert mixed.stdout.splitlines()[0] == f"{url}: ok"
    assert mixed.stdout.splitlines()[1].startswith(f"{dead}: unreachable (")
    try:
        down = run_cli("health", "down", servers=url)
        assert down.returncode == 0 and orjson.loads(down.stdout)["up"] is False
        assert run_cli("health", servers=url).stdout == f"{url}: marked down\n"
    finally:
        assert run_cli("health", "up", servers=url).returncode == 0
    two = run_cli("health", "down", servers=f"{url},{dead}")
    assert two.returncode == 2 and "one --server" in one_error_line(two)


def test_cluster_status_prints_the_document(url: str) -> None:
    status = run_cli("cluster", servers=url)
    assert status.returncode == 0 and "members" in orjson.loads(status.stdout)


def test_credentials_from_the_environment(tmp_path: Path) -> None:
    passwords = tmp_path / "htpasswd"
    htpasswd(passwords, "alice", "secret", "-B")
    node = ServerProcess(tmp_path / "data", ["-pw", str(passwords)]).start()
    try:
        url = f"http://127.0.0.1:{node.port}"
        right = cli_environment(url, CHANGEAGENT_PASSWORD="secret")
        posted = run_cli("post", "--user", "alice", '"hi"', environment=right)
        assert posted.returncode == 0, posted.stderr
        wrong = cli_environment(url, CHANGEAGENT_PASSWORD="wrong")
        refused = run_cli("post", "--user", "alice", '"hi"', environment=wrong)
        assert refused.returncode == 1 and "401" in one_error_line(refused)
        anonymous = run_cli("get", "1", servers=url)
        assert anonymous.returncode == 1 and "401" in one_error_line(anonymous)
        no_password = run_cli("get", "1", "--user", "alice", servers=url)
        assert no_password.returncode == 2
        assert "CHANGEAGENT_PASSWORD" in one_error_line(no_password)
    finally:
        node.stop()
