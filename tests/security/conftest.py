from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.security.pki import Pki, make_pki
from tests.security.support import Node

StartNode = Callable[..., Node]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    """Start nodes (each with its own data directory); all are killed by pid at the end."""
    started: list[Node] = []

    def start(*arguments: str, expect: tuple[str, ...] = ("http",)) -> Node:
        data_dir = tmp_path / f"data{len(started)}"
        node = Node(data_dir, list(arguments), expect)
        started.append(node)
        return node.start()

    try:
        yield start
    finally:
        for node in started:
            node.kill()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
