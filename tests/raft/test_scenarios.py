"""Data-driven scenarios: each script in scenarios/ runs and must print exactly
its recorded trace. Set RAFT_SCENARIOS_REWRITE=1 to re-record after a deliberate
change, then review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .scenario import run_script

SCRIPTS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


def test_there_are_scenarios() -> None:
    names = {path.stem for path in SCRIPTS}
    for topic in ("prevote", "check_quorum", "membership", "transfer", "read_index", "snapshot"):
        assert any(topic in name for name in names), topic


@pytest.mark.parametrize("path", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_scenario(path: Path) -> None:
    expected, actual = run_script(path, rewrite=os.environ.get("RAFT_SCENARIOS_REWRITE") == "1")
    assert actual == expected
