"""The archive of purged history on real processes: every purged change is in the
archive exactly once (archive + what remains == everything written), also when the
node is killed with SIGKILL between the archive and the purge, again and again."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from changeagent.node.archiver import KILL_AFTER_ARCHIVE_ENVIRONMENT
from tests.cli.support import one_error_line, run_cli
from tests.support.server import ServerProcess, wait_until

KEEP = 10  # minPurgeRecords: what every purge leaves in the log
HOOK_LINE = f"{KILL_AFTER_ARCHIVE_ENVIRONMENT} set: SIGKILL now"


def settings_file(tmp_path: Path, archive_dir: str = "archive") -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(f"minPurgeRecords: {KEEP}\nminPurgeDuration: 1ms\narchiveDir: {archive_dir}\n")
    return path


def node(tmp_path: Path, settings: Path) -> ServerProcess:
    return ServerProcess(tmp_path / "data", ["-f", str(settings), "--purge-interval", "0.05"])


def archived(directory: Path) -> list[dict[str, Any]]:
    result = run_cli("archive", "cat", str(directory))
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def retained(server: ServerProcess) -> list[dict[str, Any]]:
    page = server.get_changes(limit=10_000).json()
    assert page["atEnd"]
    changes: list[dict[str, Any]] = page["changes"]
    return changes


def post_many(server: ServerProcess, count: int, first: int, acknowledged: dict[int, Any]) -> None:
    """Post `count` changes from 3 threads; stop quietly when the node goes away."""

    def write(offset: int) -> None:
        for number in range(first + offset, first + count, 3):
            try:
                answer = server.post_change(
                    {"data": {"n": number}, "tags": [f"t{number % 4}"]},
                    {"Idempotency-Key": f"n{number}"},
                )
            except OSError:
                return
            if answer.status != 200:
                return
            change = answer.json()
            acknowledged[change["_id"]] = change

    threads = [threading.Thread(target=write, args=(offset,)) for offset in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def check_exactly_once(everything: list[dict[str, Any]], acknowledged: dict[int, Any]) -> None:
    """Archive followed by what remains: ids strictly increasing (no duplicate, in
    order), every acknowledged change there with its body."""
    ids = [change["_id"] for change in everything]
    assert ids == sorted(set(ids)), "duplicated or out of order"
    by_id = {change["_id"]: change for change in everything}
    missing = [change_id for change_id in acknowledged if change_id not in by_id]
    assert not missing, missing[:10]
    assert all(by_id[change_id] == change for change_id, change in acknowledged.items())


def test_purges_archive_every_change_exactly_once(tmp_path: Path) -> None:
    server = node(tmp_path, settings_file(tmp_path)).start()
    try:
        acknowledged: dict[int, Any] = {}
        post_many(server, 600, 0, acknowledged)
        assert len(acknowledged) == 600

        def purged() -> bool:
            return len(retained(server)) == KEEP

        wait_until(purged, timeout_s=60)
        kept = retained(server)
        everything = archived(tmp_path / "data" / "archive") + kept
        assert len(everything) == 600
        check_exactly_once(everything, acknowledged)
        assert kept == [acknowledged[change_id] for change_id in sorted(acknowledged)][-KEEP:]
        # The filters of `archive cat`, and `ls --verify`.
        tagged = run_cli("archive", "cat", str(tmp_path / "data" / "archive"), "--tag", "t1",
                         "--since", "100")  # fmt: skip
        lines = [orjson.loads(line) for line in tagged.stdout.splitlines()]
        assert lines and all(line["tags"] == ["t1"] and line["_id"] > 100 for line in lines)
        listing = run_cli("archive", "ls", "--verify", str(tmp_path / "data" / "archive"))
        assert listing.returncode == 0, listing.stderr
        assert f"{600 - KEEP} changes" in listing.stdout and "verified" in listing.stdout
        # Turning the archive off through /config: later purges archive nothing more.
        turned_off = server.request(
            "PUT", "/config", "archiveDir: ''\n", {"Content-Type": "application/yaml"}
        )
        assert turned_off.status == 200 and "archiveDir" not in turned_off.text
        assert server.request("GET", "/diagnostics/raft").json()["archive"] is None
        post_many(server, 30, 600, acknowledged)
        wait_until(lambda: retained(server)[0]["_id"] > max(kept_id["_id"] for kept_id in kept))
        assert len(archived(tmp_path / "data" / "archive")) == 600 - KEEP
    finally:
        server.kill()


def test_an_archive_that_cannot_be_written_holds_the_purge_back(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the archive should go")
    server = node(tmp_path, settings_file(tmp_path, str(blocker))).start()
    try:
        acknowledged: dict[int, Any] = {}
        post_many(server, 60, 0, acknowledged)
        wait_until(lambda: any("cannot archive purged changes" in line for line in server.log))
        wait_until(lambda: server.request("GET", "/diagnostics/raft").json()["purgeChecks"] >= 5)
        assert len(retained(server)) == 60  # nothing purged: nothing could be archived
        archive = server.request("GET", "/diagnostics/raft").json()["archive"]
        assert archive["dir"] == str(blocker) and "cannot archive" in archive["failure"]
        blocker.unlink()  # the cause goes away: the retried archive and the purge go on
        wait_until(lambda: len(retained(server)) == KEEP, timeout_s=30)
        archive = server.request("GET", "/diagnostics/raft").json()["archive"]
        in_archive = archived(blocker)
        assert archive["failure"] is None
        assert archive["archivedThrough"] >= in_archive[-1]["_id"]
        check_exactly_once(in_archive + retained(server), acknowledged)
    finally:
        server.kill()


def killed_by_the_hook(server: ServerProcess) -> bool:
    return (
        server.process is not None
        and server.process.poll() == -9
        and any(HOOK_LINE in line for line in server.log)
    )


def test_kill_9_between_archive_and_purge_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_file(tmp_path)
    archive = tmp_path / "data" / "archive"
    acknowledged: dict[int, Any] = {}
    monkeypatch.setenv(KILL_AFTER_ARCHIVE_ENVIRONMENT, "1")
    kills = 0
    written = 0
    while kills < 3:
        server = node(tmp_path, settings)
        try:
            server.start()
        except RuntimeError:  # the hook fired while it started (a purge left to archive)
            assert any(HOOK_LINE in line for line in server.log), "".join(server.log)
            kills += 1
            continue
        try:
            post_many(server, 200, written, acknowledged)
            written += 200
            wait_until(lambda server=server: killed_by_the_hook(server), timeout_s=60)
        finally:
            server.kill()
        kills += 1
        # Killed after the archive was durable, before the purge: the archived
        # changes are still in the log, and the archive holds them once.
        in_archive = archived(archive)
        assert in_archive, "the hook fires only after an archive that wrote changes"
        first_in_log = _first_change_in_log(tmp_path / "data")
        assert first_in_log is not None and first_in_log <= in_archive[-1]["_id"]
    monkeypatch.delenv(KILL_AFTER_ARCHIVE_ENVIRONMENT)
    server = node(tmp_path, settings).start()
    try:
        post_many(server, 50, written, acknowledged)
        wait_until(lambda: len(retained(server)) == KEEP, timeout_s=60)
        check_exactly_once(archived(archive) + retained(server), acknowledged)
    finally:
        server.kill()


def _first_change_in_log(data_dir: Path) -> int | None:
    connection = sqlite3.connect(f"file:{data_dir / 'changeagent.db'}?mode=ro", uri=True)
    try:
        row = connection.execute("SELECT min(idx) FROM entries WHERE type >= 0").fetchone()
        return None if row[0] is None else int(row[0])
    finally:
        connection.close()


def test_archive_commands_refuse_what_they_cannot_read(tmp_path: Path) -> None:
    missing = run_cli("archive", "ls", str(tmp_path / "nothing"))
    assert missing.returncode == 1
    assert "is not a directory" in one_error_line(missing)
    assert run_cli("archive", "cat").returncode == 2
    assert run_cli("archive", "cat", str(tmp_path), "--since", "x").returncode == 2
    empty = run_cli("archive", "ls", str(tmp_path))
    assert empty.returncode == 0 and "0 segments, 0 changes" in empty.stdout
