"""Tests of the storage's inline writes, whatever this machine's disk does now."""

from __future__ import annotations

import pytest

from changeagent.storage import store


def inline_whatever_the_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a COMMIT slower than `WRITE_NOW_COMMIT_S_MAX` the next small write goes to
    the writer thread (the loop never waits for a slow disk). A busy disk (3 and 10 ms
    commits were seen) then sent writes that tests expect inline to the writer thread,
    in every tree. The rule itself has its own test (tests/storage/test_write_now.py)."""
    monkeypatch.setattr(store, "WRITE_NOW_COMMIT_S_MAX", float("inf"))
