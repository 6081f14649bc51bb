"""Client and AsyncClient against a real standalone server: round trips, typed
errors, Basic credentials, and retries across a dead and a live URL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from changeagent.client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    Unauthorized,
)
from tests.client.conftest import MAX_BODY_BYTES
from tests.security.support import htpasswd
from tests.support.cluster import free_port
from tests.support.server import ServerProcess

FAST_RETRY = RetryPolicy(attempts_max=4, backoff_initial_s=0.01, backoff_max_s=0.05)


def test_sync_post_get_changes_round_trip(url: str) -> None:
    tag = uuid.uuid4().hex
    with Client(url) as client:
        first = client.post({"n": 1}, tags=[tag], type=3)
        second = client.post("plain", tags=[tag, "other"])
        assert (first.data, first.tags, first.type) == ({"n": 1}, (tag,), 3)
        assert first.ts > 0 and second.id > first.id
        assert client.get(first.id) == first
        page = client.changes(since=first.id - 1, tags=[tag])
        assert page.changes == (first, second) and page.at_end and not page.missed
        assert client.changes(since=first.id - 1, tags=[tag], type=3).changes == (first,)
        assert client.health().ok
        assert isinstance(client.cluster(), dict)


def test_async_post_get_changes_round_trip(url: str) -> None:
    async def run() -> None:
        tag = uuid.uuid4().hex
        async with AsyncClient(url) as client:
            posted = await asyncio.gather(*(client.post(n, tags=[tag]) for n in range(5)))
            assert sorted(change.data for change in posted) == list(range(5))
            assert await client.get(posted[0].id) == posted[0]
            page = await client.changes(tags=[tag], consistency="linearizable")
            assert {change.id for change in page.changes} == {change.id for change in posted}
            assert (await client.health(0)).detail == "ok"

    asyncio.run(run())


def test_missing_change_raises_not_found(url: str) -> None:
    with Client(url) as client, pytest.raises(NotFound) as raised:
        client.get(10**9)
    assert raised.value.status == 404 and raised.value.message


def test_too_large_change_raises_payload_too_large(url: str) -> None:
    with Client(url) as client, pytest.raises(PayloadTooLarge) as raised:
        client.post("x" * (2 * MAX_BODY_BYTES))
    assert raised.value.status == 413


def test_same_idempotency_key_stores_once(url: str) -> None:
    tag = uuid.uuid4().hex
    with Client(url) as client:
        first = client.post({"once": True}, tags=[tag], idempotency_key=tag)
        again = client.post({"once": True}, tags=[tag], idempotency_key=tag)
        assert again == first
        assert client.changes(tags=[tag]).changes == (first,)


def test_dead_server_then_live_server_posts(url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with Client([dead, url], retry=FAST_RETRY) as client:
        change = client.post({"via": "second"})
        assert client.get(change.id) == change


def test_no_server_reachable_raises_connection_failed() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with Client(dead, retry=FAST_RETRY) as client, pytest.raises(ConnectionFailed):
        client.post("nowhere")


def test_wrong_password_raises_unauthorized(tmp_path: Path) -> None:
    passwords = tmp_path / "htpasswd"
    htpasswd(passwords, "alice", "right-password", "-B")
    node = ServerProcess(tmp_path / "data", ["-pw", str(passwords)]).start()
    try:
        url = f"http://127.0.0.1:{node.port}"
        with Client(url, auth=("alice", "wrong")) as client, pytest.raises(Unauthorized):
            client.changes()
        with Client(url, auth=("alice", "right-password")) as client:
            assert client.get(client.post("authorized").id).data == "authorized"
    finally:
        node.stop()
