"""Operations tests (issue 14): metrics, logs, and a real Prometheus server.
Every process started here is stopped by pid at the end of its test."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.support.server import ServerProcess

USER = "alice"
PASSWORD = "correct horse battery staple"

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start a node with these arguments (data in a fresh directory each time)."""
    started: list[ServerProcess] = []

    def start(*arguments: str) -> ServerProcess:
        process = ServerProcess(tmp_path / f"data{len(started)}", list(arguments)).start()
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    """An htpasswd file with USER (bcrypt, as `htpasswd -B` makes it)."""
    path = tmp_path / "passwd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{USER}:{hashed}\n")
    return path


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
