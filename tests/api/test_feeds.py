"""Streaming feeds on GET /changes against real processes: continuous (NDJSON) and
eventsource (SSE), filters, resume with Last-Event-ID, heartbeats, a purge gap,
--max-streams, a consumer too slow to keep up, SIGTERM, auth, a follower."""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.security.support import basic, htpasswd
from tests.support.cluster import Cluster, load_changes
from tests.support.server import ServerProcess, wait_until

READ_TIMEOUT_S = 30.0


def open_stream(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT_S)
    connection.request("GET", path, headers=headers or {})
    return connection, connection.getresponse()


def lines(answer: http.client.HTTPResponse, count: int) -> list[bytes]:
    return [answer.readline() for _ in range(count)]


def events(answer: http.client.HTTPResponse, count: int) -> list[dict[str, Any]]:
    """The next `count` SSE events (comments skipped): their fields, data parsed."""
    found: list[dict[str, Any]] = []
    event: dict[str, Any] = {}
    while len(found) < count:
        line = answer.readline().decode().rstrip("\n")
        if line == "":
            if event:
                found.append(event)
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            event[name] = orjson.loads(value) if name == "data" else value
    return found


def test_continuous_feed_with_limit_ends_after_that_many(server: ServerProcess) -> None:
    tag = uuid.uuid4().hex
    posted = [server.post_change({"data": n, "tags": [tag]}).json() for n in range(5)]
    connection, answer = open_stream(server.port, f"/changes?feed=continuous&limit=3&tag={tag}")
    try:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "application/x-ndjson"
        assert answer.headers["Cache-Control"] == "no-store"
        body = answer.read()  # the stream ends by itself
        assert [orjson.loads(line) for line in body.splitlines()] == posted[:3]
    finally:
        connection.close()


def test_continuous_feed_follows_commits_filters_and_heartbeats(server: ServerProcess) -> None:
    tag, other = uuid.uuid4().hex, uuid.uuid4().hex
    start = server.post_change({"data": "before", "tags": [tag]}).json()["_id"]
    path = f"/changes?feed=continuous&since={start}&tag={tag}&type=2&heartbeat=200"
    connection, answer = open_stream(server.port, path)
    try:
        assert answer.readline() == b"\n"  # nothing yet: a heartbeat within 200 ms
        server.post_change({"data": "other tag", "tags": [other], "type": 2})
        server.post_change({"data": "other type", "tags": [tag], "type": 1})
        wanted = [
            server.post_change({"data": n, "tags": [tag], "type": 2}).json() for n in range(3)
        ]
        received = [line for line in lines(answer, 10) if line != b"\n"][:3]
        assert [orjson.loads(line) for line in received] == wanted
    finally:
        connection.close()


def test_eventsource_by_accept_and_resume_with_last_event_id(server: ServerProcess) -> None:
    tag = uuid.uuid4().hex
    posted = [server.post_change({"data": n, "tags": [tag]}).json() for n in range(4)]
    accept = {"Accept": "text/event-stream"}
    connection, answer = open_stream(server.port, f"/changes?tag={tag}", accept)
    try:
        assert answer.headers["Content-Type"] == "text/event-stream"
        got = events(answer, 2)
        assert got == [
            {"id": str(change["_id"]), "event": "change", "data": change} for change in posted[:2]
        ]
    finally:
        connection.close()
    resumed = {**accept, "Last-Event-ID": str(posted[1]["_id"])}
    connection, answer = open_stream(server.port, f"/changes?tag={tag}&since=0", resumed)
    try:
        assert [event["data"] for event in events(answer, 2)] == posted[2:]
    finally:
        connection.close()
    bad = server.request("GET", "/changes?feed=eventsource", headers={"Last-Event-ID": "x1"})
    assert bad.status == 400 and "Last-Event-ID" in bad.json()["error"]
    assert server.request("GET", "/changes?feed=websocket").status == 400


def test_a_purge_gap_comes_first_as_a_missed_event(make_server: Any, tmp_path: Path) -> None:
    node = make_server("--purge-interval", "0.05")
    posted = [node.post_change({"data": n}).json() for n in range(10)]
    yaml = "minPurgeRecords: 3\nminPurgeDuration: 1ms\n"
    assert node.request("PUT", "/config", yaml, {"Content-Type": "application/yaml"}).status == 200
    since = posted[0]["_id"]
    wait_until(lambda: node.get_changes(since=since).json().get("missedChanges"), 30, 0.05)
    first_retained = node.get_changes(since=since).json()["firstRetained"]
    connection, answer = open_stream(node.port, f"/changes?feed=eventsource&since={since}")
    try:
        missed, first = events(answer, 2)
        assert missed == {"event": "missed", "data": {"firstRetained": first_retained}}
        assert first["data"]["_id"] == first_retained
    finally:
        connection.close()


def test_streams_beyond_max_streams_get_503(make_server: Any) -> None:
    node = make_server("--max-streams", "2")
    # A closed stream's slot is free once its next write fails: heartbeats every 100 ms.
    opened = [open_stream(node.port, "/changes?feed=continuous&heartbeat=100") for _ in range(2)]
    try:
        third = node.request("GET", "/changes?feed=continuous&heartbeat=100")
        assert third.status == 503 and "at most 2 streams" in third.json()["error"]
        assert node.request("GET", "/changes").status == 200  # pages are not streams
    finally:
        for connection, _ in opened:
            connection.close()
    wait_until(lambda: _stream_opens(node), 30, 0.05)


def _stream_opens(node: ServerProcess) -> bool:
    connection, answer = open_stream(node.port, "/changes?feed=continuous&limit=1&since=0")
    try:
        return answer.status == 200
    finally:
        connection.close()


def test_a_consumer_that_stops_reading_is_dropped_and_the_node_goes_on(
    make_server: Any,
) -> None:
    node = make_server("--stream-send-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=READ_TIMEOUT_S)
    try:
        sock.sendall(b"GET /changes?feed=continuous HTTP/1.1\r\nHost: t\r\n\r\n")
        big = {"data": "x" * 50_000}
        count = 600  # 30 MB, more than the kernel's socket buffers hold
        for _ in range(count):  # the node goes on answering while the stream is stuck
            assert node.post_change(big).status == 200
        # The node drops the stream with a TCP reset (without it reading a byte).
        wait_until(lambda: sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0, 30, 0.05)
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                received += chunk
        assert not received.endswith(b"0\r\n\r\n")  # cut off, not a clean end
        assert len(received) < count * 50_000
        assert _stream_opens(node)
    finally:
        sock.close()


def test_sigterm_ends_streams_cleanly(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path / "data").start()
    try:
        connection, answer = open_stream(node.port, "/changes?feed=continuous&heartbeat=60000")
        posted = node.post_change({"data": "one"}).json()
        first = answer.readline()
        while first == b"\n":
            first = answer.readline()
        assert orjson.loads(first)["_id"] >= posted["_id"]
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        assert answer.read() in (b"", b"\n")  # the chunked stream ends properly
        assert node.process.wait(30) == 0
        connection.close()
    finally:
        node.kill()


def test_feeds_need_credentials_under_pw(make_server: Any, tmp_path: Path) -> None:
    passwords = tmp_path / "htpasswd"
    htpasswd(passwords, "alice", "secret", "-B")
    node = make_server("-pw", str(passwords))
    assert node.request("GET", "/changes?feed=continuous&limit=1").status == 401
    alice = basic("alice", "secret")
    posted = node.post_change({"data": 1}, headers=alice).json()
    path = f"/changes?feed=continuous&limit=1&since={posted['_id'] - 1}"
    connection, answer = open_stream(node.port, path, alice)
    try:
        assert answer.status == 200 and orjson.loads(answer.read()) == posted
    finally:
        connection.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, 3)
    try:
        yield nodes.start().form()
    finally:
        nodes.kill()


def test_a_follower_streams_what_the_leader_commits(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    start = leader.post_change({"data": "start"}).json()["_id"]
    cluster.wait_converged()
    path = f"/changes?feed=eventsource&since={start}"
    connection, answer = open_stream(follower.port, path)
    try:
        posted = [leader.post_change({"data": n}).json() for n in range(3)]
        assert [event["data"] for event in events(answer, 3)] == posted
    finally:
        connection.close()


def test_a_stream_ends_cleanly_at_its_max_age(make_server: Any) -> None:
    node = make_server("--stream-max-age", "0.5")
    posted = node.post_change({"data": "one"}).json()
    path = f"/changes?feed=continuous&since={posted['_id'] - 1}&heartbeat=100"
    connection, answer = open_stream(node.port, path)
    try:
        body = answer.read()  # ends by itself, with the chunked terminator
        changes = [orjson.loads(line) for line in body.splitlines() if line]
        assert changes == [posted]
    finally:
        connection.close()


def test_streams_at_one_position_each_get_every_change_once_in_order(
    server: ServerProcess,
) -> None:
    """Streams at the tail are written by the commit notification itself, one shared
    chunk per commit and format; a burst of concurrent writes reaches each of them
    complete, in order, once."""
    start = server.post_change({"data": "start"}).json()["_id"]
    kinds = ["continuous", "eventsource"] * 3
    streams = [open_stream(server.port, f"/changes?feed={kind}&since={start}") for kind in kinds]
    try:
        load_changes(server.port, 300, connections=16, tag="burst")
        expected = [c["_id"] for c in server.get_changes(since=start, limit=1000).json()["changes"]]
        assert len(expected) == 300
        for kind, (_, answer) in zip(kinds, streams, strict=True):
            if kind == "continuous":
                got = [orjson.loads(line)["_id"] for line in lines(answer, 300)]
            else:
                got = [event["data"]["_id"] for event in events(answer, 300)]
            assert got == expected
    finally:
        for connection, _ in streams:
            connection.close()
