"""Limits are consistent from the body to the transport frame: a body the API
accepts always fits in an entry, an APPEND and a frame (also with
--max-body-bytes raised); one change that can never fit gets 413 alone and never
fails the writes proposed with it."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson

from tests.support.cluster import Cluster
from tests.support.retry import retry_while_unavailable
from tests.support.server import Response, ServerProcess, wait_until

BODY_BYTES_MAX = 1024 * 1024


def body_of(size: int) -> bytes:
    """A compact {"data": "xxx..."} body of exactly `size` bytes."""
    return b'{"data":"' + b"x" * (size - 11) + b'"}'


def post(server: ServerProcess, body: bytes, key: str = "") -> Response:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    return server.request("POST", "/changes", body, headers)


def test_the_largest_accepted_body_is_stored_with_concurrent_writes(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d").start()
    try:
        small: list[Response] = []
        writers = [
            threading.Thread(target=lambda n=n: small.append(post(server, body_of(20 + n))))
            for n in range(16)
        ]
        for writer in writers:
            writer.start()
        large = post(server, body_of(BODY_BYTES_MAX - 1))
        for writer in writers:
            writer.join(30)
        assert large.status == 200, large.body[:200]
        assert [answer.status for answer in small] == [200] * 16
        stored = orjson.loads(large.body)
        again = server.request("GET", f"/changes/{stored['_id']}")
        assert again.status == 200 and len(orjson.loads(again.body)["data"]) == BODY_BYTES_MAX - 12
        too_large = post(server, body_of(BODY_BYTES_MAX + 1))
        assert too_large.status == 413 and "error" in orjson.loads(too_large.body)
    finally:
        server.kill()


def test_a_change_that_grows_past_the_limit_once_stored_gets_413(tmp_path: Path) -> None:
    """1e5 is stored as 100000.0: a body under the limit can exceed the entry
    limit once re-encoded. It gets 413 every time (not a 503 that says retry),
    and the writes after it work."""
    server = ServerProcess(tmp_path / "d").start()
    try:
        count = (BODY_BYTES_MAX - 20) // 4
        body = b'{"data":[' + b",".join([b"1e5"] * count) + b"]}"
        assert len(body) < BODY_BYTES_MAX
        for _attempt in range(2):
            answer = post(server, body)
            assert answer.status == 413, (answer.status, answer.body[:200])
            assert "limit" in orjson.loads(answer.body)["error"]
        assert post(server, b'{"data":"after"}').status == 200
    finally:
        server.kill()


def test_a_raised_body_limit_replicates_through_the_cluster(tmp_path: Path) -> None:
    """With --max-body-bytes above the default peer frame (16 MiB), a change of
    that size is forwarded, replicated and served by every member, once.

    The entry is too large to be written on a member's event loop, and the leader
    heartbeats while its writer thread writes it: no election follows, however
    slow the disk. (Before, the leader sent nothing until its write was durable,
    and CI once saw an election, the forwarded write answered with the documented
    503 "it may have taken effect". A client retries that with the same
    Idempotency-Key, and so does this; the term must not have moved, though.)"""
    size = 20 * 1024 * 1024
    cluster = Cluster(tmp_path, 3, ["--max-body-bytes", str(size + 1024)]).start().form()
    try:
        leader = cluster.leader()
        follower = next(node for node in cluster.nodes if node is not leader)
        assert follower.server is not None
        server, body = follower.server, body_of(size)
        term = leader.raft()["term"]
        answer = retry_while_unavailable(
            lambda: post(server, body, "large-1"), lambda answer: answer.status
        )
        told = [line for node in cluster.nodes for line in node.role_changes()]
        assert answer.status == 200, (answer.status, answer.body[:200], told)
        index = orjson.loads(answer.body)["_id"]
        listed = follower.request("GET", "/changes?since=0&limit=10", timeout_s=30)
        assert [change["_id"] for change in listed.json()["changes"]] == [index], told
        for node in cluster.nodes:
            stored = wait_until(
                lambda node=node: (r := node.request("GET", f"/changes/{index}")).status == 200
                and r,
                30,
                0.05,
            )
            assert len(orjson.loads(stored.body)["data"]) == size - 11
        terms = [node.raft()["term"] for node in cluster.nodes]
        assert terms == [term] * len(cluster.nodes), (term, terms, told)
    finally:
        cluster.kill()
