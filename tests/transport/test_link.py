"""The send queue, backoff and config without I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from changeagent.transport import TransportConfig, TransportConfigError
from changeagent.transport.link import Backoff, Outgoing, SendQueue


def test_queue_drops_oldest_raft_messages_by_bytes() -> None:
    queue = SendQueue(messages_max=100, bytes_max=10)
    assert queue.push(Outgoing(b"aaaa")) == (True, 0)
    assert queue.push(Outgoing(b"bbbb", request_id=1)) == (True, 0)
    assert queue.push(Outgoing(b"cccc")) == (True, 1)  # "aaaa" goes, the request stays
    assert [item.body for item in queue.pop_batch(100)[0]] == [b"bbbb", b"cccc"]


def test_queue_refuses_requests_it_cannot_fit_and_drops_nothing_for_them() -> None:
    queue = SendQueue(messages_max=2, bytes_max=100)
    queue.push(Outgoing(b"r1", request_id=1))
    queue.push(Outgoing(b"r2", request_id=2))
    assert queue.push(Outgoing(b"r3", request_id=3)) == (False, 0)
    assert queue.push(Outgoing(b"m")) == (False, 1)
    assert queue.push(Outgoing(b"x" * 101)) == (False, 1)
    assert len(queue) == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 30), st.booleans()), max_size=60))
def test_queue_bounds_hold_and_requests_are_never_dropped(pushes: list[tuple[int, bool]]) -> None:
    queue = SendQueue(messages_max=5, bytes_max=60)
    accepted_requests: list[int] = []
    for number, (size, is_request) in enumerate(pushes, start=1):
        queued, _ = queue.push(Outgoing(b"x" * size, request_id=number if is_request else 0))
        if queued and is_request:
            accepted_requests.append(number)
        assert len(queue) <= 5 and queue.bytes <= 60
    remaining = [item.request_id for item in queue.drain() if item.request_id]
    assert remaining == accepted_requests


def test_pop_batch_takes_at_least_one_and_respects_the_byte_budget() -> None:
    queue = SendQueue(messages_max=10, bytes_max=100)
    for body in (b"x" * 30, b"y" * 30, b"z" * 30):
        queue.push(Outgoing(body))
    assert len(queue.pop_batch(10)[0]) == 1
    assert len(queue.pop_batch(60)[0]) == 2
    assert queue.pop_batch(60) == ([], 0) and queue.bytes == 0


def test_pop_batch_drops_raft_messages_queued_before_the_cutoff_but_no_request() -> None:
    queue = SendQueue(messages_max=10, bytes_max=100)
    queue.push(Outgoing(b"old", queued_s=1.0))
    queue.push(Outgoing(b"request", request_id=7, queued_s=1.0))  # old, but a request
    queue.push(Outgoing(b"older", queued_s=0.5))  # out of order: each is judged alone
    queue.push(Outgoing(b"fresh", queued_s=2.0))
    batch, stale = queue.pop_batch(100, stale_before_s=1.5)
    assert [item.body for item in batch] == [b"request", b"fresh"]
    assert stale == 2 and len(queue) == 0 and queue.bytes == 0


def test_pop_batch_looks_past_stale_messages_for_one_to_send() -> None:
    queue = SendQueue(messages_max=10, bytes_max=200)
    for when in (1.0, 1.1, 1.2):
        queue.push(Outgoing(b"x" * 30, queued_s=when))
    queue.push(Outgoing(b"y" * 30, queued_s=5.0))
    batch, stale = queue.pop_batch(10, stale_before_s=2.0)  # budget below one frame
    assert ([item.body for item in batch], stale) == ([b"y" * 30], 3)
    assert queue.pop_batch(10, stale_before_s=2.0) == ([], 0)


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(3))
    delays = [backoff.next_delay_s() for _ in range(10)]
    for attempt, delay in enumerate(delays):
        ceiling = min(1.0, 0.1 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay_s() <= 0.1


@pytest.mark.parametrize(
    "changes",
    [
        {"frame_bytes_max": 0},
        {"keepalive_s": 20.0},
        {"backoff_s_min": 5.0},
        {"queue_bytes_max": 1024},
        {"inbound_connections_max": True},
    ],
)
def test_bad_config_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(TransportConfigError):
        TransportConfig(**changes).validate()  # type: ignore[arg-type]
