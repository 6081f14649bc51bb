"""Web hooks validate every change before it is stored: any refusal stores nothing."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from tests.support.server import ServerProcess


class HookServer:
    """A loopback HTTP server standing in for the systems that validate changes."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], object]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = orjson.loads(self.rfile.read(length))
                hook.received.append((self.path, dict(self.headers), body))
                status = 200 if self.path.startswith("/ok") else 422
                payload = b"" if status == 200 else b"colour must be blue"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *arguments: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks() -> Iterator[HookServer]:
    server = HookServer()
    yield server
    server.close()


def start_with_hooks(tmp_path: Path, *uris: str, headers: str = "") -> ServerProcess:
    settings = tmp_path / "settings.yaml"
    lines = ["webHooks:"] + [f"- uri: {uri}" + headers for uri in uris]
    settings.write_text("\n".join(lines) + "\n")
    return ServerProcess(tmp_path / "d", ["-f", str(settings)]).start()


def test_accepted_by_every_hook_is_stored(tmp_path: Path, hooks: HookServer) -> None:
    server = start_with_hooks(
        tmp_path, hooks.url("/ok/1"), hooks.url("/ok/2"), headers="\n  headers: {X-Token: s3cret}"
    )
    try:
        response = server.post_change({"data": {"colour": "blue"}, "tags": ["t"], "type": 4})
        assert response.status == 200
        assert sorted(path for path, _, _ in hooks.received) == ["/ok/1", "/ok/2"]
        for _, headers, body in hooks.received:
            assert headers["X-Token"] == "s3cret"
            assert body == {"data": {"colour": "blue"}, "tags": ["t"], "type": 4}
    finally:
        server.kill()


def test_refused_by_one_hook_stores_nothing(tmp_path: Path, hooks: HookServer) -> None:
    server = start_with_hooks(tmp_path, hooks.url("/ok"), hooks.url("/no"))
    try:
        response = server.post_change({"data": {"colour": "red"}})
        assert response.status == 400
        error = response.json()["error"]
        assert "/no" in error and "422" in error and "colour must be blue" in error
        assert server.get_changes().json()["changes"] == []
    finally:
        server.kill()


def test_unreachable_hook_is_503_and_stores_nothing(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_with_hooks(tmp_path, f"http://127.0.0.1:{port}/gone")
    try:
        response = server.post_change({"data": 1})
        assert response.status == 503
        assert "could not be reached" in response.json()["error"]
        assert server.get_changes().json()["changes"] == []
    finally:
        server.kill()


def test_hooks_set_through_config_apply_at_once(server: ServerProcess, hooks: HookServer) -> None:
    assert server.post_change({"data": "before"}).status == 200
    put = server.request(
        "PUT", "/config", f"webHooks:\n- uri: {hooks.url('/no')}\n", {"Content-Type": "text/yaml"}
    )
    assert put.status == 200
    assert server.post_change({"data": "after"}).status == 400
    assert [c["data"] for c in server.get_changes().json()["changes"]] == ["before"]
