"""`changeagent backup`: usage errors (exit 2) before any request, local errors, and
the API's credentials."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.cli.support import cli_environment, one_error_line, run_cli
from tests.security.support import htpasswd
from tests.support.server import ServerProcess


def test_backup_usage_errors_exit_2(tmp_path: Path) -> None:
    missing_out = run_cli("backup", "--server", "http://127.0.0.1:9")
    assert missing_out.returncode == 2 and "--out" in missing_out.stderr
    two = run_cli(
        "backup", "--server", "http://127.0.0.1:9", "--server", "http://127.0.0.1:10",
        "--out", str(tmp_path / "x.backup"),
    )  # fmt: skip
    assert two.returncode == 2 and "give one --server" in one_error_line(two)
    directory = run_cli("backup", "--server", "http://127.0.0.1:9", "--out", str(tmp_path))
    assert directory.returncode == 2 and "is a directory" in one_error_line(directory)


def test_backup_to_an_unwritable_place_is_one_line(url: str, tmp_path: Path) -> None:
    result = run_cli("backup", "--server", url, "--out", str(tmp_path / "no" / "such" / "dir.b"))
    assert result.returncode == 1
    assert "cannot write" in one_error_line(result)


def test_backup_needs_the_api_credentials(tmp_path: Path) -> None:
    passwords = tmp_path / "htpasswd"
    htpasswd(passwords, "alice", "secret", "-B")
    node = ServerProcess(tmp_path / "data", ["-pw", str(passwords)]).start()
    try:
        url = f"http://127.0.0.1:{node.port}"
        assert node.request("GET", "/backup").status == 401
        anonymous = run_cli("backup", "--server", url, "--out", str(tmp_path / "a.backup"))
        assert anonymous.returncode == 1 and "401" in one_error_line(anonymous)
        assert not (tmp_path / "a.backup").exists()
        right = cli_environment(url, CHANGEAGENT_PASSWORD="secret")
        saved = run_cli(
            "backup", "--user", "alice", "--out", str(tmp_path / "b.backup"), environment=right
        )
        assert saved.returncode == 0, saved.stderr
        assert orjson.loads(saved.stdout)["bytes"] == (tmp_path / "b.backup").stat().st_size
    finally:
        node.stop()
