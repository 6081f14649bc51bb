"""Client.backup / AsyncClient.backup: a checked, atomic save of GET /backup; a damaged
or cut answer never replaces the file already there."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from changeagent.backup_format import BackupVerifier
from changeagent.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    InvalidBackup,
    RetryPolicy,
)
from tests.support.server import ServerProcess

QUICK = RetryPolicy(attempts_max=2, backoff_initial_s=0.01, backoff_max_s=0.01)


def check_file(path: Path) -> str:
    verifier = BackupVerifier()
    verifier.feed(path.read_bytes())
    verifier.finish()
    return verifier.sha256


def test_backup_saves_a_checked_file(server: ServerProcess, url: str, tmp_path: Path) -> None:
    with Client(url) as client:
        stored = [client.post({"n": number}).id for number in range(5)]
        target = tmp_path / "one.backup"
        target.write_bytes(b"an older backup")
        saved = client.backup(target)
    assert saved.path == str(target) and saved.bytes == target.stat().st_size
    assert saved.sha256 == check_file(target)
    assert saved.last_change_id >= stored[-1] and saved.changes >= 5
    assert saved.commit_index >= saved.last_change_id
    assert saved.node_id == server.request("GET", "/diagnostics/id").text
    assert [path.name for path in tmp_path.iterdir()] == ["one.backup"]


def test_async_backup(url: str, tmp_path: Path) -> None:
    async def run() -> None:
        async with AsyncClient(url) as client:
            saved = await client.backup(tmp_path / "async.backup")
        assert saved.sha256 == check_file(tmp_path / "async.backup")

    asyncio.run(run())


class _Damaged(http.server.BaseHTTPRequestHandler):
    """Answers GET /backup with a real backup, altered as the server is told."""

    body = b""
    mode = "corrupt"

    def do_GET(self) -> None:
        body = self.body
        self.send_response(409 if self.mode == "conflict" else 200)
        self.send_header("Content-Type", "application/vnd.changeagent.backup")
        if self.mode == "corrupt":
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 1]) + body[middle + 1 :]
            self.send_header("Content-Length", str(len(body)))
        elif self.mode == "cut":  # announces everything, sends half, closes
            self.send_header("Content-Length", str(len(body)))
            body = body[: len(body) // 2]
        elif self.mode == "conflict":
            body = b'{"error": "a backup of this node is running"}'
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *arguments: object) -> None:
        pass


@pytest.fixture
def damaged(url: str, tmp_path: Path) -> Iterator[tuple[str, type[_Damaged]]]:
    with Client(url) as client:
        client.backup(tmp_path / "real.backup")
    handler = type("Handler", (_Damaged,), {"body": (tmp_path / "real.backup").read_bytes()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.mark.parametrize(
    ("mode", "error"),
    [("corrupt", InvalidBackup), ("cut", ConnectionFailed), ("conflict", Conflict)],
)
def test_a_bad_answer_leaves_the_target_alone(
    damaged: tuple[str, type[_Damaged]], tmp_path: Path, mode: str, error: type[Exception]
) -> None:
    fake_url, handler = damaged
    handler.mode = mode
    target = tmp_path / "target.backup"
    target.write_bytes(b"the previous backup")
    with Client(fake_url, retry=QUICK) as client, pytest.raises(error) as raised:
        client.backup(target)
    if mode == "corrupt":
        assert "checksum" in str(raised.value)
    assert target.read_bytes() == b"the previous backup"
    leftovers = sorted(path.name for path in tmp_path.iterdir())
    assert leftovers == ["real.backup", "target.backup"]
