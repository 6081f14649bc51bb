"""CLI tests run the real `changeagent` command against real nodes on loopback;
every process started here is stopped by pid at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.conftest import pki, start_node  # noqa: F401  (fixtures for TLS tests)
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    node = ServerProcess(tmp_path_factory.mktemp("cli-server")).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def url(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.port}"
