"""Helpers for the security system tests: password files made by Apache's real
`htpasswd`, and node processes that may listen on HTTP, HTTPS or both."""

from __future__ import annotations

import base64
import http.client
import re
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.server import Response, kill, spawn_logged, terminate

LISTENING = re.compile(r"listening on (https?)://[^:]+:(\d+)")
START_TIMEOUT_S = 30.0


def htpasswd(path: Path, user: str, password: str, *flags: str) -> None:
    """Add or replace `user` with Apache's htpasswd (`-B`: bcrypt; `-m`: MD5; `-s`: SHA).

    The password goes through stdin (`-i`), as an operator would type it.
    """
    create = ["-c"] if not path.exists() else []
    subprocess.run(
        ["htpasswd", *create, "-i", *flags, str(path), user],
        input=password.encode(),
        check=True,
        capture_output=True,
        timeout=30,
    )


def htpasswd_delete(path: Path, user: str) -> None:
    subprocess.run(["htpasswd", "-D", str(path), user], check=True, capture_output=True)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@dataclass
class Node:
    """A changeagent process on loopback; `ports` maps "http"/"https" to bound ports."""

    data_dir: Path
    arguments: list[str]
    expect: tuple[str, ...] = ("http",)
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Node:
        command = [sys.executable, "-m", "changeagent", "--host", "127.0.0.1"]
        command += ["-d", str(self.data_dir), *self.arguments]
        self.process = spawn_logged(command, self.log, self._on_line, self._ready)
        if not self._ready.wait(START_TIMEOUT_S) or set(self.expect) - set(self.ports):
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        return self

    def _on_line(self, line: str) -> None:
        match = LISTENING.search(line)
        if match:
            self.ports[match.group(1)] = int(match.group(2))
            if not set(self.expect) - set(self.ports):
                self._ready.set()

    def log_text(self) -> str:
        return "".join(self.log)

    def stop(self, timeout_s: float = 70.0) -> int:
        return terminate(self.process, timeout_s)

    def kill(self) -> None:
        kill(self.process)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Response:
        """One request on a new connection: HTTPS when `tls` is given, else HTTP."""
        connection: http.client.HTTPConnection
        if tls is not None:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self.ports["https"], timeout=30, context=tls
            )
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.ports["http"], timeout=30)
        try:
            payload = body.encode() if isinstance(body, str) else body
            connection.request(method, path, body=payload, headers=headers or {})
            answer = connection.getresponse()
            return Response(answer.status, dict(answer.getheaders()), answer.read())
        finally:
            connection.close()


def run_cli(*arguments: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `changeagent` with these arguments to completion (flag checks)."""
    return subprocess.run(
        [sys.executable, "-m", "changeagent", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
