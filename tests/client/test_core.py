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
from changeagent.client.core import (
    LAG_CHECK_S,
    ClientCore,
    Done,
    Follower,
    LagCheck,
    Operation,
    Wait,
)

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


# The lag switch ------------------------------------------------------------------

THREE = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def follower(
    since: int = 10, lag_check_s: float | None = 2.0, stop_at_end: bool = False
) -> tuple[Follower, Clock]:
    clock = Clock()
    reader = Follower(
        since, ("t",), 4, 30.0, 100, False, stop_at_end, lag_check_s=lag_check_s, clock=clock
    )
    return reader, clock


def page(*ids: int, at_end: bool = True, missed: bool = False) -> Page:
    return Page(tuple(Change(i, 1) for i in ids), False, at_end, missed)


def param(operation: Operation[Page], name: str) -> list[str]:
    return [value for key, value in operation.params if key == name]


def run(check: LagCheck, answers: dict[int, Page | None]) -> list[int]:
    """Answer each probe from `answers` (by server index); the servers asked, in order."""
    asked: list[int] = []
    while (operation := check.operation()) is not None:
        assert operation.server is not None
        server = [url.rstrip("/") for url in THREE].index(operation.server)
        asked.append(server)
        check.answered(answers[server])
    return asked


def test_long_polls_are_capped_by_the_lag_check_only_with_several_servers() -> None:
    reader, _ = follower(lag_check_s=2.0)
    several = ClientCore.create(THREE, None, seed=1)
    assert param(reader.operation(several), "block") == ["2.0"]
    assert param(reader.operation(ClientCore.create(THREE[0], None, 1)), "block") == ["30.0"]
    unchecked, _ = follower(lag_check_s=None)
    assert param(unchecked.operation(several), "block") == ["30.0"]
    assert Follower(0, (), None, 30.0, 10, False).lag_check_s == LAG_CHECK_S < 30.0
    with pytest.raises(ValueError):
        follower(lag_check_s=0)


def test_a_quiet_member_behind_another_is_left() -> None:
    client = ClientCore.create(THREE, None, seed=1)
    reader, clock = follower(since=10)
    assert reader.take(page()) == []  # the first end reached: check at once
    check = reader.lag_check(client)
    assert check is not None
    probe = check.operation()
    assert probe is not None and probe.server == THREE[1] and not probe.retry
    assert (param(probe, "since"), param(probe, "limit"), param(probe, "block")) == (
        ["10"],
        ["1"],
        ["0.0"],
    )
    assert (param(probe, "tag"), param(probe, "type")) == (["t"], ["4"])
    # Server 1 has nothing new either, server 2 does; server 0 still has nothing.
    assert run(check, {1: page(), 2: page(11), 0: page()}) == [1, 2, 0]
    assert (client.current, check.switched_to, reader.switches) == (2, 2, 1)
    # The next read goes to the new server, still after the position.
    request = client.call(reader.operation(client)).request()
    assert request.url == THREE[2] + "/changes" and ("since", "10") in request.params
    # The member is trusted for lag_check_s after a check.
    reader.take(page())
    assert reader.lag_check(client) is None
    clock.now += 2.0
    reader.take(page())
    assert reader.lag_check(client) is not None


def test_no_switch_when_the_member_in_use_has_caught_up_meanwhile() -> None:
    client = ClientCore.create(THREE, None, seed=1)
    reader, _ = follower(since=10)
    reader.take(page())
    check = reader.lag_check(client)
    assert check is not None
    assert run(check, {1: page(12), 0: page(12)}) == [1, 0]  # stops at the first ahead
    assert (client.current, check.switched_to, reader.switches) == (0, None, 0)


def test_no_switch_when_no_other_is_ahead_and_failures_count_as_no_answer() -> None:
    client = ClientCore.create(THREE, None, seed=1)
    reader, _ = follower(since=10)
    reader.take(page(9, 10))  # nothing after the position, anywhere
    check = reader.lag_check(client)
    assert check is not None
    assert run(check, {1: None, 2: page(10)}) == [1, 2]
    assert (client.current, reader.switches) == (0, 0)


def test_an_unanswering_member_in_use_is_left_for_one_ahead() -> None:
    client = ClientCore.create(THREE, None, seed=1)
    client.current = 1
    reader, _ = follower(since=10)
    reader.take(page())
    check = reader.lag_check(client)
    assert check is not None
    assert run(check, {2: page(), 0: page(15), 1: None}) == [2, 0, 1]
    assert client.current == 0


def test_a_member_that_delivers_but_lags_is_checked_at_its_end() -> None:
    client = ClientCore.create(THREE, None, seed=1)
    reader, clock = follower(since=10)
    reader.take(page())
    check = reader.lag_check(client)
    assert check is not None and run(check, {1: page(), 2: page(), 0: page()}) == [1, 2]
    clock.now += 1.0
    batch = reader.take(page(11, 12))  # at its end, but trusted for 2 s
    reader.taken(batch[-1])
    assert reader.lag_check(client) is None
    clock.now += 1.5
    batch = reader.take(page(13, 14, at_end=False))  # a backlog: no check
    reader.taken(batch[-1])
    assert reader.lag_check(client) is None
    batch = reader.take(page(15))  # its end again, 2.5 s after the check
    reader.taken(batch[-1])
    check = reader.lag_check(client)
    assert check is not None
    probe = check.operation()
    assert probe is not None and ("since", "15") in probe.params
    assert run(check, {1: page(16), 0: page()}) == [1, 0]
    assert client.current == 1


def test_a_purge_gap_on_the_other_member_counts_as_ahead() -> None:
    client = ClientCore.create(THREE, None, seed=1)
    reader, _ = follower(since=10)
    reader.take(page())
    check = reader.lag_check(client)
    assert check is not None
    assert run(check, {1: page(missed=True), 0: page()}) == [1, 0]
    assert client.current == 1


def test_stop_at_end_checks_the_others_before_stopping() -> None:
    client = ClientCore.create(THREE, None, seed=1)
    reader, _ = follower(since=10, stop_at_end=True)
    assert param(reader.operation(client), "block") == ["0.0"]
    reader.take(page())
    assert reader.done
    check = reader.lag_check(client)
    assert check is not None and run(check, {1: page(), 2: page(), 0: page()}) == [1, 2]
    assert reader.done
    reader.take(page())  # stop_at_end checks every time it would stop
    check = reader.lag_check(client)
    assert check is not None and run(check, {1: page(11), 0: page()}) == [1, 0]
    assert not reader.done and client.current == 1


def test_one_server_never_checks() -> None:
    client = ClientCore.create(THREE[0], None, seed=1)
    reader, _ = follower(since=10)
    reader.take(page())
    assert reader.lag_check(client) is None
