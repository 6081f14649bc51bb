"""A client's retry of a write answered 503 ("retry, with the same Idempotency-Key"),
shared by the tests that post through a cluster where an election may happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

A = TypeVar("A")

UNAVAILABLE = 503
PAUSE_S = 0.2  # between a client's retries, not a synchronization


def retry_while_unavailable(
    send: Callable[[], A], status_of: Callable[[A], int | None], timeout_s: float = 60.0
) -> A:
    """`send()` again while it is answered 503, until another answer or `timeout_s`
    has passed; the last answer. `send` must carry its Idempotency-Key."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = send()
        if status_of(answer) != UNAVAILABLE or time.monotonic() >= deadline:
            return answer
        time.sleep(PAUSE_S)
