"""Online backup and restore on real processes: `changeagent backup` under a write
load, `changeagent restore`, and the restored node serving exactly the committed
prefix of the original; damaged files refused; one backup at a time."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import orjson

from tests.cli.support import one_error_line, run_cli
from tests.support.server import ServerProcess, wait_until

WRITERS = 3


class Writers:
    """Threads posting changes until stopped; what was acknowledged, by `_id`."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.acknowledged: dict[int, dict[str, Any]] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._write, args=(number,)) for number in range(WRITERS)
        ]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _write(self, writer: int) -> None:
        number = 0
        while not self._stop.is_set():
            document = {"data": {"writer": writer, "n": number}, "tags": [f"w{writer}"]}
            if number % 3 == 0:
                document["type"] = 7
            answer = self.server.post_change(document, {"Idempotency-Key": f"{writer}-{number}"})
            if answer.status != 200:
                self.failures.append(f"{answer.status} {answer.body[:200]!r}")
                return
            with self._lock:
                change = answer.json()
                self.acknowledged[change["_id"]] = change
            number += 1

    def snapshot(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return dict(self.acknowledged)


def all_changes(server: ServerProcess) -> list[dict[str, Any]]:
    changes: list[dict[str, Any]] = []
    since = 0
    while True:
        page = server.get_changes(since=since, limit=1000).json()
        changes += page["changes"]
        if page["atEnd"]:
            return changes
        since = page["changes"][-1]["_id"]


def backup(server: ServerProcess, out: Path) -> dict[str, Any]:
    result = run_cli("backup", "--server", f"http://127.0.0.1:{server.port}", "--out", str(out))
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = orjson.loads(result.stdout)
    return document


def restore(backup_file: Path, data_dir: Path) -> str:
    result = run_cli("restore", "--from", str(backup_file), "-d", str(data_dir))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_backup_under_load_restores_exactly_the_committed_prefix(tmp_path: Path) -> None:
    original = ServerProcess(tmp_path / "original").start()
    restored: ServerProcess | None = None
    try:
        with Writers(original) as writers:
            wait_until(lambda: len(writers.snapshot()) >= 300, timeout_s=60)
            before = writers.snapshot()  # acknowledged before the backup began
            saved = backup(original, tmp_path / "node.backup")
            wait_until(lambda: len(writers.snapshot()) >= len(before) + 100, timeout_s=60)
        assert not writers.failures, writers.failures[:3]
        assert saved["bytes"] == (tmp_path / "node.backup").stat().st_size
        assert not list(tmp_path.glob(".node.backup.*"))  # no temporary file left behind
        assert not list((tmp_path / "original").glob("backup-*"))  # nor on the server
        everything = all_changes(original)
        original_id = original.request("GET", "/diagnostics/id").text

        summary = restore(tmp_path / "node.backup", tmp_path / "restored")
        assert "standalone node" in summary
        restored = ServerProcess(tmp_path / "restored").start()
        held = all_changes(restored)
        # Exactly a prefix of the original's list: same ids and bodies, no gap, nothing
        # the original does not hold; it ends where the backup says.
        assert held == everything[: len(held)]
        assert held[-1]["_id"] == saved["lastChangeId"]
        assert len(held) == saved["changes"]
        # Everything acknowledged before the backup began is in it.
        by_id = {change["_id"]: change for change in held}
        assert all(by_id.get(change_id) == change for change_id, change in before.items())
        assert len(held) >= len(before)
        # Filters work on the restored node (tags and type indexes came along).
        typed = restored.get_changes(type=7, limit=1000).json()["changes"]
        assert typed == [change for change in held if change.get("type") == 7][:1000]
        # A new node: another id, no cluster; writes continue after the last _id.
        assert restored.request("GET", "/diagnostics/id").text != original_id
        cluster = restored.request("GET", "/cluster").json()
        assert cluster["clusterId"] == "0" and cluster["members"] == {}
        fresh = restored.post_change({"data": "after restore"}).json()
        assert fresh["_id"] > held[-1]["_id"]
        # An idempotent retry of a change in the backup returns it, not a new one.
        some_id = min(before)
        key = f"{before[some_id]['data']['writer']}-{before[some_id]['data']['n']}"
        again = restored.post_change({"data": "retry"}, {"Idempotency-Key": key})
        assert again.status == 200 and again.json() == before[some_id]
    finally:
        original.kill()
        if restored is not None:
            restored.kill()


def test_truncated_corrupted_or_foreign_files_are_refused(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "node").start()
    try:
        for number in range(20):
            assert server.post_change({"data": number}).status == 200
        backup(server, tmp_path / "good.backup")
    finally:
        server.kill()
    data = (tmp_path / "good.backup").read_bytes()
    cases = {
        "truncated.backup": (data[: len(data) // 2], "truncated"),
        "short-trailer.backup": (data[:-10], "truncated"),
        "corrupted.backup": (data[:5000] + bytes([data[5000] ^ 0x40]) + data[5001:], "checksum"),
        "foreign.backup": (b"SQLite format 3\x00" + bytes(4096), "does not start like"),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        target = tmp_path / f"restored-{name}"
        result = run_cli("restore", "--from", str(tmp_path / name), "-d", str(target))
        assert result.returncode == 1, (name, result.stderr)
        line = one_error_line(result)
        assert line.startswith(f"changeagent restore: {tmp_path / name} is not a usable backup")
        assert reason in line, (name, line)
        assert not target.exists()  # nothing half-made
        assert not [path for path in tmp_path.iterdir() if ".restoring-" in path.name]
    # A directory that holds anything is refused; an empty one is used.
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    result = run_cli("restore", "--from", str(tmp_path / "good.backup"), "-d", str(occupied))
    assert result.returncode == 1 and "is not empty" in one_error_line(result)
    assert [path.name for path in occupied.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    restore(tmp_path / "good.backup", empty)
    assert (empty / "changeagent.db").exists()
    # Usage errors exit 2.
    assert run_cli("restore", "--from", str(tmp_path / "good.backup")).returncode == 2
    missing = run_cli("restore", "--from", str(tmp_path / "nope"), "-d", str(tmp_path / "x"))
    assert missing.returncode == 1 and "No such file" in one_error_line(missing)


def test_one_backup_at_a_time_while_the_node_keeps_serving(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "node").start()
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        # ~24 MiB: more than loopback socket buffers hold, so a backup whose client
        # reads nothing stays in progress.
        for number in range(24):
            answer = server.post_change({"data": {"n": number, "pad": "x" * 1_000_000}})
            assert answer.status == 200, answer.body[:200]
        stalled.sendall(b"GET /backup HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status_line = stalled.makefile("rb").readline()
        assert status_line.startswith(b"HTTP/1.1 200"), status_line
        second = server.request("GET", "/backup")
        assert second.status == 409
        assert "running" in second.json()["error"]
        result = run_cli("backup", "--server", f"http://127.0.0.1:{server.port}", "--out",
                         str(tmp_path / "second.backup"))  # fmt: skip
        assert result.returncode == 1
        assert "server answered 409" in one_error_line(result)
        assert not (tmp_path / "second.backup").exists()
        # The node serves reads and writes while the backup is in progress.
        written = server.post_change({"data": "during the backup"})
        assert written.status == 200
        assert server.request("GET", f"/changes/{written.json()['_id']}").status == 200
    finally:
        stalled.close()  # unread data: the server's next write fails, the backup ends
    try:

        def backup_again() -> bool:
            return server.request("GET", "/backup", timeout_s=60).status == 200

        wait_until(backup_again, timeout_s=60, interval_s=0.1)
        wait_until(lambda: not list((tmp_path / "node").glob("backup-*")), timeout_s=30)
    finally:
        server.kill()
