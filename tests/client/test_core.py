"""The sans-I/O core without any I/O: request building, parsing, error mapping,
and the retry decisions."""

from __future__ import annotations

import random

import orjson
import pytest

from changeagent.client import (
    BadRequest,
    Change,
    ChangesMissed,
    ConnectionFailed,
    NotFound,
    Page,
    PayloadTooLarge,
    RetryPolicy,
    ServerError,
    Unavailable,
)
from changeagent.client.core import ClientCore, Done, Follower, Wait

SERVERS = ["http://127.0.0.1:1", "http://127.0.0.1:2/"]


def core(attempts_max: int = 3) -> ClientCore:
    return ClientCore.create(SERVERS, RetryPolicy(attempts_max=attempts_max), seed=7)


def test_change_is_parsed_with_defaults() -> None:
    change = Change.from_json({"_id": 3, "_ts": 9, "data": {"a": 1}})
    assert change == Change(3, 9, 0, (), {"a": 1})
    with pytest.raises(ValueError):
        Change.from_json({"data": 1})


def test_page_carries_purge_gap() -> None:
    page = Page.from_json(
        {"changes": [], "atStart": False, "atEnd": True, "missedChanges": True, "firstRetained": 5}
    )
    assert (page.missed, page.first_retained, page.at_end, page.at_start) == (True, 5, True, False)


def test_post_request_carries_key_and_body_on_every_attempt() -> None:
    client = core()
    call = client.call(client.post({"x": 1}, ["t"], 2, "key-1"))
    first = call.request()
    assert isinstance(call.failed("refused"), Wait)
    second = call.request()
    assert first.url == "http://127.0.0.1:1/changes"
    assert second.url == "http://127.0.0.1:2/changes"
    for request in (first, second):
        assert ("Idempotency-Key", "key-1") in request.headers
        assert orjson.loads(request.body or b"") == {"data": {"x": 1}, "tags": ["t"], "type": 2}


@pytest.mark.parametrize(
    ("status", "kind"), [(400, BadRequest), (404, NotFound), (413, PayloadTooLarge)]
)
def test_client_errors_are_typed_and_not_retried(status: int, kind: type[ServerError]) -> None:
    client = core()
    call = client.call(client.get(1, None))
    with pytest.raises(kind) as raised:
        call.answered(status, {}, b'{"error":"no such thing"}')
    assert (raised.value.status, raised.value.message) == (status, "no such thing")
    assert call.attempt == 1


def test_503_retries_honour_retry_after_then_raise_unavailable() -> None:
    client = core(attempts_max=2)
    call = client.call(client.cluster())
    step = call.answered(503, {"retry-after": "1"}, b'{"error":"no leader"}')
    assert isinstance(step, Wait) and step.delay_s >= 1.0
    with pytest.raises(Unavailable, match="no leader"):
        call.answered(503, {}, b'{"error":"no leader"}')


def test_connection_failures_end_in_connection_failed() -> None:
    client = core(attempts_max=2)
    call = client.call(client.changes(0, 10, ("a", "b"), 1, None))
    assert ("tag", "b") in call.request().params
    call.failed("refused")
    with pytest.raises(ConnectionFailed, match="2 attempts"):
        call.failed("refused")


def test_success_parses_and_keeps_the_server() -> None:
    client = core()
    call = client.call(client.get(4, None))
    call.failed("refused")
    step = call.answered(200, {}, b'{"_id":4,"_ts":1,"data":null}')
    assert isinstance(step, Done) and step.value.id == 4
    assert client.current == 1


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(backoff_initial_s=0.1, backoff_max_s=0.4)
    rng = random.Random(1)
    delays = [policy.delay_s(retry, None, rng) for retry in range(1, 6)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(0.2 <= delay <= 0.4 for delay in delays[2:])
    assert policy.delay_s(1, 60.0, rng) == policy.retry_after_max_s


def test_follower_skips_what_it_has_seen_and_reports_purge_gaps() -> None:
    follower = Follower(since=5, tags=(), type=None, block_s=1.0, limit=10, skip_missed=False)
    lagging = Page(tuple(Change(i, 1) for i in (4, 5, 7, 6)), False, True)
    assert [change.id for change in follower.take(lagging)] == [6, 7]
    follower.taken(Change(7, 1))
    assert ("since", "7") in follower.operation(core()).params
    gap = Page((Change(20, 1),), False, True, missed=True, first_retained=20)
    with pytest.raises(ChangesMissed) as raised:
        follower.take(gap)
    assert (raised.value.since, raised.value.first_retained) == (7, 20)
    follower.skip_missed = True
    assert [change.id for change in follower.take(gap)] == [20]
