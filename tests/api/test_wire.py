"""The lean response path (api/wire.py) is byte-for-byte ordinary HTTP/1.1: the same
headers as aiohttp's own answers, a correct Content-Length, keep-alive that works,
pipelined requests answered in order, and the normal path for HTTP/1.0 and
`Connection: close`. Woken long-polls are written from inside the commit
notification, so they get the same checks."""

from __future__ import annotations

import http.client
import socket
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from changeagent.api.wire import JsonResponse
from tests.api.test_long_poll import wait_for_waiters
from tests.support.server import ServerProcess

TIMEOUT_S = 10.0
NO_STORE = {"cache-control": "no-store"}


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[str, dict[str, str], bytes]:
    """One response from `sock` (Content-Length framing); leftover bytes stay in `buffer`."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"duplicate header {name}"
        headers[name.lower()] = value.strip()
    length = int(headers["content-length"])
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    buffer[:] = body[length:]
    return status_line, headers, bytes(body[:length])


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S)


def get(path: str, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n".encode()


def post(document: object) -> bytes:
    body = orjson.dumps(document)
    return (
        b"POST /changes HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def reference_headers(server: ServerProcess) -> dict[str, str]:
    """Headers of an answer built by aiohttp's own web.Response (a JSON 404)."""
    with connect(server) as sock:
        sock.sendall(get("/changes/999999"))
        status, headers, _ = read_response(sock, bytearray())
    assert status == "HTTP/1.1 404 Not Found"
    return headers


def assert_like_aiohttp(
    headers: dict[str, str],
    body: bytes,
    reference: dict[str, str],
    extra: dict[str, str] | None = None,
) -> None:
    """aiohttp's headers, plus exactly `extra` (caching: names lower-case; a value of
    "" only checks that the header is there)."""
    extra = extra or {}
    assert set(headers) == set(reference) | set(extra)
    for name, value in extra.items():
        assert value == "" or headers[name] == value, (name, headers[name])
    assert headers["content-type"] == reference["content-type"] == "application/json"
    assert headers["server"] == reference["server"]
    assert int(headers["content-length"]) == len(body)
    assert headers["date"].endswith(" GMT")


def test_post_and_get_answers_carry_aiohttp_headers_and_keep_the_connection(
    server: ServerProcess,
) -> None:
    reference = reference_headers(server)
    with connect(server) as sock:
        buffer = bytearray()
        sock.sendall(post({"data": "one"}))
        status, headers, body = read_response(sock, buffer)
        assert status == "HTTP/1.1 200 OK"
        assert_like_aiohttp(headers, body, reference)
        stored = orjson.loads(body)
        sock.sendall(get(f"/changes/{stored['_id']}"))  # same connection: kept alive
        status, headers, body = read_response(sock, buffer)
        assert status == "HTTP/1.1 200 OK" and orjson.loads(body) == stored
        assert_like_aiohttp(headers, body, reference)
        sock.sendall(get(f"/changes?since={stored['_id'] - 1}"))
        status, headers, body = read_response(sock, buffer)
        assert orjson.loads(body)["changes"] == [stored]
        assert_like_aiohttp(headers, body, reference, {"cache-control": "no-cache", "etag": ""})
        sock.sendall(get(f"/changes?since={stored['_id'] - 1}&limit=1"))
        status, headers, body = read_response(sock, buffer)
        assert orjson.loads(body)["changes"] == [stored]
        immutable = "public, max-age=86400, immutable"
        assert_like_aiohttp(headers, body, reference, {"cache-control": immutable, "etag": ""})


def test_woken_long_poll_is_plain_http_and_the_connection_serves_pipelined_requests(
    server: ServerProcess,
) -> None:
    reference = reference_headers(server)
    last = server.post_change({"data": 0}).json()["_id"]
    with connect(server) as sock:
        buffer = bytearray()
        # The long-poll and a request pipelined behind it, sent together.
        sock.sendall(get(f"/changes?since={last}&block=30") + get("/changes/999999"))
        wait_for_waiters(server, 1)
        posted = server.post_change({"data": "wake"}).json()
        status, headers, body = read_response(sock, buffer)
        assert status == "HTTP/1.1 200 OK"
        assert_like_aiohttp(headers, body, reference, NO_STORE)
        assert orjson.loads(body) == {"changes": [posted], "atStart": False, "atEnd": True}
        status, _, body = read_response(sock, buffer)  # the pipelined one, in order
        assert status == "HTTP/1.1 404 Not Found" and b"error" in body
        # Long-poll again on the same connection: the handler's bookkeeping finished.
        sock.sendall(get(f"/changes?since={posted['_id']}&block=30"))
        wait_for_waiters(server, 1)
        again = server.post_change({"data": "again"}).json()
        status, headers, body = read_response(sock, buffer)
        assert orjson.loads(body)["changes"] == [again]
        assert_like_aiohttp(headers, body, reference, NO_STORE)
        assert buffer == b""


@pytest.mark.parametrize(
    ("version", "extra", "connection"),
    [
        ("1.0", "", None),
        ("1.0", "Connection: keep-alive\r\n", "keep-alive"),
        ("1.1", "Connection: close\r\n", "close"),
    ],
)
def test_long_polls_that_need_other_headers_take_aiohttp_path(
    server: ServerProcess, version: str, extra: str, connection: str | None
) -> None:
    last = server.post_change({"data": 0}).json()["_id"]
    with connect(server) as sock:
        buffer = bytearray()
        sock.sendall(get(f"/changes?since={last}&block=30", version, extra))
        wait_for_waiters(server, 1)
        posted = server.post_change({"data": "wake"}).json()
        status, headers, body = read_response(sock, buffer)
        assert status == f"HTTP/{version} 200 OK"
        assert headers.get("connection") == connection
        assert headers["cache-control"] == "no-store"
        assert orjson.loads(body)["changes"] == [posted]
        if connection != "keep-alive":
            assert sock.recv(1) == b""  # the server closes, as the headers said


def test_many_woken_long_polls_each_get_one_complete_answer(server: ServerProcess) -> None:
    last = server.post_change({"data": 0}).json()["_id"]
    consumers = 50
    connections = [
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
        for _ in range(consumers)
    ]
    with ThreadPoolExecutor(max_workers=consumers) as pool:

        def long_poll(connection: http.client.HTTPConnection) -> tuple[int, bytes]:
            connection.request("GET", f"/changes?since={last}&block=30")
            answer = connection.getresponse()
            return answer.status, answer.read()

        futures = [pool.submit(long_poll, connection) for connection in connections]
        wait_for_waiters(server, consumers)
        posted = server.post_change({"data": "all"}).json()
        answers = [future.result(timeout=TIMEOUT_S) for future in futures]
    assert {status for status, _ in answers} == {200}
    assert {body for _, body in answers} == {
        orjson.dumps({"changes": [posted], "atStart": False, "atEnd": True})
    }
    for connection in connections:  # every connection is still usable
        connection.request("GET", f"/changes/{posted['_id']}")
        answer = connection.getresponse()
        assert answer.status == 200 and orjson.loads(answer.read()) == posted
        connection.close()


def test_the_aiohttp_internals_the_fast_path_sets_still_mean_what_it_relies_on() -> None:
    """`JsonResponse` marks a response it wrote itself as finished by setting three
    private attributes of aiohttp's StreamResponse (pyproject pins the aiohttp
    range this was checked against). If an aiohttp release renames them or
    changes what they mean, this fails instead of responses silently breaking."""
    response = JsonResponse(b"{}")
    for name in ("_eof_sent", "_keep_alive", "_body_length"):
        assert hasattr(response, name), f"aiohttp's StreamResponse has no {name} any more"
    assert not response.prepared
    response._finish(2)
    assert response.prepared, "a finished response must count as prepared (no second send)"
    assert response.keep_alive is True
    assert response.body_length == 2
