"""Real changeagent processes for system tests: started on a free loopback port,
talked to over real sockets, stopped by pid."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

LISTENING = re.compile(r"listening on http://[^:]+:(\d+)")
START_TIMEOUT_S = 30.0


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def spawn_logged(
    command: list[str], log: list[str], on_line: Callable[[str], None], done: threading.Event
) -> subprocess.Popen[bytes]:
    """Start `command`; a thread keeps its stderr lines in `log`, hands each to
    `on_line`, and sets `done` when the process exits (so a starter waiting on
    `done` for a "listening on" line wakes up either way)."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)

    def drain() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            log.append(line)
            on_line(line)
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    return process


def terminate(process: subprocess.Popen[bytes] | None, timeout_s: float) -> int:
    """SIGTERM (unless it has exited) and wait for the exit status."""
    assert process is not None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout_s)


def kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)


@dataclass
class ServerProcess:
    data_dir: Path
    arguments: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> ServerProcess:
        command = [
            sys.executable,
            "-m",
            "changeagent",
            "-p",
            "0",
            "--host",
            "127.0.0.1",
            "-d",
            str(self.data_dir),
            *self.arguments,
        ]
        self._ready.clear()
        self.process = spawn_logged(command, self.log, self._on_line, self._ready)
        if not self._ready.wait(START_TIMEOUT_S) or not self.port:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        return self

    def _on_line(self, line: str) -> None:
        match = LISTENING.search(line)
        if match:
            self.port = int(match.group(1))
            self._ready.set()

    def stop(self, timeout_s: float = 70.0) -> int:
        """SIGTERM and wait for the exit status."""
        return terminate(self.process, timeout_s)

    def kill(self) -> None:
        kill(self.process)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            payload = body.encode() if isinstance(body, str) else body
            connection.request(method, path, body=payload, headers=headers or {})
            answer = connection.getresponse()
            return Response(answer.status, dict(answer.getheaders()), answer.read())
        finally:
            connection.close()

    def post_change(self, document: Any, headers: dict[str, str] | None = None) -> Response:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        return self.request("POST", "/changes", orjson.dumps(document), all_headers)

    def get_changes(self, **parameters: Any) -> Response:
        pairs: list[tuple[str, Any]] = []
        for name, value in parameters.items():
            values = value if isinstance(value, list) else [value]
            pairs += [(name, item) for item in values]
        query = urlencode(pairs)
        return self.request("GET", "/changes" + (f"?{query}" if query else ""))

    def form(self, method: str, path: str, fields: dict[str, str]) -> Response:
        return self.request(
            method, path, urlencode(fields), {"Content-Type": "application/x-www-form-urlencoded"}
        )


def wait_until(condition: Any, timeout_s: float = 10.0, interval_s: float = 0.01) -> Any:
    """Poll `condition` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def read_response(connection: socket.socket, buffered: bytes) -> tuple[bytes, bytes, bytes]:
    """(head, body, what follows) of one HTTP/1.1 response read from `connection`."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        chunk = connection.recv(65536)
        assert chunk, "the server closed the connection"
        rest += chunk
    return head, rest[:length], rest[length:]
