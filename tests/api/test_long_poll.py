"""Long-polls: wake on matching commits only, time out empty, answer at shutdown."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.support.server import Response, ServerProcess


@pytest.fixture
def pool():  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


def poll_started(server: ServerProcess, count: int) -> bool:
    return server.request("GET", "/diagnostics/raft").json()["longPolls"] >= count


def wait_for_waiters(server: ServerProcess, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not poll_started(server, count):
        assert time.monotonic() < deadline, "long-polls did not start waiting"
        time.sleep(0.01)


def test_block_returns_as_soon_as_a_change_commits(server: ServerProcess, pool) -> None:  # type: ignore[no-untyped-def]
    last = server.post_change({"data": 0}).json()["_id"]
    waiting: Future[Response] = pool.submit(lambda: server.get_changes(since=last, block=30))
    wait_for_waiters(server, 1)
    posted = server.post_change({"data": 1}).json()
    answer = waiting.result(timeout=10)
    assert answer.status == 200
    assert answer.json()["changes"] == [posted]


def test_non_matching_changes_do_not_end_the_wait(server: ServerProcess, pool) -> None:  # type: ignore[no-untyped-def]
    last = server.post_change({"data": 0}).json()["_id"]
    waiting = pool.submit(lambda: server.get_changes(since=last, tag="wanted", block=30))
    wait_for_waiters(server, 1)
    for n in range(3):
        server.post_change({"data": n, "tags": ["other"]})
    assert not waiting.done()
    assert poll_started(server, 1)
    wanted = server.post_change({"data": "yes", "tags": ["wanted"]}).json()
    assert waiting.result(timeout=10).json()["changes"] == [wanted]


def test_timeout_gives_empty_list(server: ServerProcess) -> None:
    last = server.post_change({"data": 0}).json()["_id"]
    started = time.monotonic()
    answer = server.get_changes(since=last, block=0.3)
    assert time.monotonic() - started >= 0.3
    assert answer.json() == {"changes": [], "atStart": False, "atEnd": True}


def test_many_waiters_share_one_wake_up(server: ServerProcess, pool) -> None:  # type: ignore[no-untyped-def]
    last = server.post_change({"data": 0}).json()["_id"]
    futures = [pool.submit(lambda: server.get_changes(since=last, block=30)) for _ in range(8)]
    wait_for_waiters(server, 8)
    posted = server.post_change({"data": "all"}).json()
    bodies = {future.result(timeout=10).body for future in futures}
    assert len(bodies) == 1
    assert Response(200, {}, bodies.pop()).json()["changes"] == [posted]


def test_existing_changes_answer_immediately(server: ServerProcess) -> None:
    server.post_change({"data": 0})
    started = time.monotonic()
    assert len(server.get_changes(block=30).json()["changes"]) == 1
    assert time.monotonic() - started < 5


def test_shutdown_answers_waiting_long_polls_and_exits_zero(server: ServerProcess, pool) -> None:  # type: ignore[no-untyped-def]
    last = server.post_change({"data": 0}).json()["_id"]
    waiting = pool.submit(lambda: server.get_changes(since=last, block=60))
    wait_for_waiters(server, 1)
    stopped_at = time.monotonic()
    exit_code = pool.submit(server.stop)
    answer = waiting.result(timeout=20)
    assert answer.status == 200 and answer.json()["changes"] == []
    assert exit_code.result(timeout=30) == 0
    assert time.monotonic() - stopped_at < 20


def test_in_flight_write_finishes_during_shutdown(server: ServerProcess) -> None:
    results: list[int] = []

    def writer() -> None:
        for n in range(200):
            try:
                response = server.post_change({"data": n})
            except OSError:
                return
            if response.status != 200:
                return
            results.append(response.json()["_id"])

    thread = threading.Thread(target=writer)
    thread.start()
    while not results:
        time.sleep(0.005)
    assert server.stop() == 0
    thread.join(30)
    restarted = ServerProcess(server.data_dir).start()
    try:
        stored = [c["_id"] for c in restarted.get_changes(limit=1000).json()["changes"]]
        assert set(results) <= set(stored)
    finally:
        restarted.kill()
