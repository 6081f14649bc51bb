from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data").start()
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[object]:
    started: list[ServerProcess] = []

    def make(*arguments: str, data_dir: Path | None = None) -> ServerProcess:
        process = ServerProcess(data_dir or tmp_path / "data", list(arguments)).start()
        started.append(process)
        return process

    try:
        yield make
    finally:
        for process in started:
            process.kill()
