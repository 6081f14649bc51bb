"""`changeagent backup` usage errors, before any request is made (exit 2)."""

from __future__ import annotations

from pathlib import Path

from tests.cli.support import one_error_line, run_cli


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
