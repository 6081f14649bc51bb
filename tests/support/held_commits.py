"""A storage whose COMMITs can be held in its writer thread: a write in flight."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from changeagent.storage import Storage, store

HOLD_MAX_S = 10.0  # a held COMMIT goes on by itself after this: no test hangs


class HeldCommits:
    """A storage whose COMMITs, once `hold` is called, wait in its writer thread until
    `release`: a write stays in flight while the event loop goes on. Every batch goes
    to the writer thread (a small write is otherwise committed on the loop's own
    thread when the writer is idle, and holding it would stop the whole node)."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(store, "WRITE_NOW_BYTES_MAX", 0)
        self._holding = threading.Event()
        self._committing = threading.Event()
        self._released = threading.Event()
        self.storage = Storage.open(path, fault_injector=self._inject)

    def _inject(self, commit_number: int) -> None:
        if self._holding.is_set():
            self._committing.set()
            self._released.wait(HOLD_MAX_S)

    def hold(self) -> None:
        self._holding.set()

    async def committing(self) -> None:
        """Until a held COMMIT is waiting."""
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, self._committing.wait, HOLD_MAX_S)

    def release(self) -> None:
        self._holding.clear()
        self._released.set()
