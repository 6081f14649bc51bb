"""Real-process cluster tests. Each test is bounded by pytest-timeout; the ones
marked `slow` (catch-up of a new member, the nemesis run) take most of the
directory's ~6 minutes: `-m "not slow"` skips them."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long real-process cluster test (tens of s)")
