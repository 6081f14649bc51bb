"""Client tests run against real changeagent processes on loopback; every process
started here is stopped by pid at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

MAX_BODY_BYTES = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One standalone node with a small body limit (so 413 is cheap to provoke)."""
    data_dir = tmp_path_factory.mktemp("client-server")
    node = ServerProcess(data_dir, ["--max-body-bytes", str(MAX_BODY_BYTES)]).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def url(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path
