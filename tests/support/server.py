"""Real changeagent processes for system tests: started on a free loopback port,
talked to over real sockets, stopped by pid."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
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
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S) or not self.port:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        return self

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace")
            self.log.append(line)
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()  # exited: wake the starter

    def stop(self, timeout_s: float = 70.0) -> int:
        """SIGTERM and wait for the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

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
