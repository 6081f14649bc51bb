"""The front door (api/front_door.py): plain writes answered ahead of aiohttp, every
other request handed to aiohttp at a request boundary with its bytes intact.

The in-process tests serve a node through `server.start_listener` (the listeners a
real node has) on a loopback socket and talk raw HTTP/1.1 to it, so that pipelining,
requests in pieces and the hand-over are exercised byte by byte. The differential
test at the end runs two real processes, one with the front door and one without
(--access-log turns it off), and compares their answers to the same requests.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from changeagent.api import front_door
from changeagent.api.auth import Authenticator
from changeagent.config import Settings
from changeagent.node.node import Node, NodeLimits
from changeagent.server import Listeners, ServerOptions, start_listener
from changeagent.storage import Storage
from tests.security.support import basic, htpasswd
from tests.support.held_commits import HeldCommits
from tests.support.server import ServerProcess

TIMEOUT_S = 10.0
BODY_BYTES_MAX = 4096


class Client:
    """One raw HTTP/1.1 connection: send bytes, read whole answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """(status, headers by lower-case name, body) of the next answer."""
        async with asyncio.timeout(TIMEOUT_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
            headers: dict[str, str] = {}
            for line in lines:
                name, _, value = line.partition(":")
                assert name.lower() not in headers, f"{name} twice in {head!r}"
                headers[name.lower()] = value.strip()
            if headers.get("transfer-encoding") == "chunked":
                body = await self._chunks()
            else:
                body = await self.reader.readexactly(int(headers.get("content-length", "0")))
            return int(status_line.split()[1]), headers, body

    async def _chunks(self) -> bytes:
        body = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            body += await self.reader.readexactly(size + 2)
            if size == 0:
                return body

    async def closed_by_server(self) -> bool:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.reader.read(1) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def post(
    document: object, extra: bytes = b"", path: bytes = b"/changes", version: bytes = b"1.1"
) -> bytes:
    return post_body(orjson.dumps(document), extra, path, version)


def post_body(
    body: bytes, extra: bytes = b"", path: bytes = b"/changes", version: bytes = b"1.1"
) -> bytes:
    return (
        b"POST %s HTTP/%s\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"%sContent-Length: %d\r\n\r\n%s" % (path, version, extra, len(body), body)
    )


def get(path: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % path


Scenario = Callable[[int, Listeners], Awaitable[None]]


def serve(
    tmp_path: Path,
    scenario: Scenario,
    storage: Storage | None = None,
    authenticator_file: Path | None = None,
    **options: object,
) -> None:
    """Run `scenario(port, listeners)` against a node served as `changeagent` serves it."""

    async def main() -> None:
        store = storage or Storage.open(tmp_path / "data")
        node = Node(store, Settings(), None, NodeLimits(body_bytes_max=BODY_BYTES_MAX))
        await node.start()
        authenticator = None
        if authenticator_file is not None:
            authenticator = await Authenticator.open(authenticator_file)
        server_options = ServerOptions(tmp_path, port=0, host="127.0.0.1", **options)  # type: ignore[arg-type]
        listeners = await start_listener(node, server_options, authenticator)
        try:
            assert listeners.http_port is not None
            await scenario(listeners.http_port, listeners)
        finally:
            await listeners.runner.cleanup()  # also stops the node (shutdown.py)
            if authenticator is not None:
                await authenticator.close()
            store.close()

    asyncio.run(main())


def door_count(metrics_text: bytes, status: int) -> float:
    """POST /changes answered with `status`, from GET /metrics' text."""
    pattern = (
        rb'changeagent_http_requests_total\{code="%d",method="POST",route="/changes"\} (\S+)'
        % status
    )
    match = re.search(pattern, metrics_text)
    return float(match.group(1)) if match else 0.0


# ------------------------------------------------------------------ served here


def test_a_write_is_stored_and_answered_as_the_api_answers(tmp_path: Path) -> None:
    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        await client.send(post({"type": 3, "tags": ["a"], "data": {"x": 1}}))
        status, headers, body = await client.answer()
        assert status == 200
        assert set(headers) == {"content-type", "content-length", "date", "server"}
        assert headers["content-type"] == "application/json"
        stored = orjson.loads(body)
        assert stored["type"] == 3 and stored["tags"] == ["a"] and stored["data"] == {"x": 1}
        # The same connection, handed to aiohttp by the read: it sees the write.
        await client.send(get(b"/changes/%d" % stored["_id"]))
        status, _, body = await client.answer()
        assert (status, orjson.loads(body)) == (200, stored)
        await client.send(get(b"/metrics"))
        status, _, metrics_text = await client.answer()
        assert status == 200
        assert door_count(metrics_text, 200) == 1
        await client.close()

    serve(tmp_path, scenario)


def test_pipelined_writes_and_reads_are_answered_in_order(tmp_path: Path) -> None:
    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        await client.send(
            post({"data": 1}) + post({"data": 2}) + get(b"/changes?since=0") + post({"data": 3})
        )
        first = orjson.loads((await client.answer())[2])
        second = orjson.loads((await client.answer())[2])
        page = orjson.loads((await client.answer())[2])
        third = orjson.loads((await client.answer())[2])
        assert [first["data"], second["data"], third["data"]] == [1, 2, 3]
        assert [change["data"] for change in page["changes"]] == [1, 2]
        assert first["_id"] < second["_id"] < third["_id"]
        await client.close()

    serve(tmp_path, scenario)


def test_a_write_arriving_a_byte_at_a_time(tmp_path: Path) -> None:
    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        for byte in post({"data": "slow"}) + post({"data": "slower"}):
            await client.send(bytes([byte]))
        assert orjson.loads((await client.answer())[2])["data"] == "slow"
        assert orjson.loads((await client.answer())[2])["data"] == "slower"
        await client.close()

    serve(tmp_path, scenario)


def test_an_invalid_change_is_400_and_the_connection_goes_on(tmp_path: Path) -> None:
    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        await client.send(post_body(b'{"data":') + post({"type": "x"}) + post({"data": "fine"}))
        status, headers, body = await client.answer()
        assert status == 400 and "not valid JSON" in orjson.loads(body)["error"]
        assert headers["content-type"] == "application/json"
        status, _, body = await client.answer()
        assert status == 400 and "type" in orjson.loads(body)["error"]
        status, _, body = await client.answer()
        assert (status, orjson.loads(body)["data"]) == (200, "fine")
        await client.close()

    serve(tmp_path, scenario)


def test_a_failed_write_is_503_with_retry_after(tmp_path: Path) -> None:
    failing = threading.Event()

    def injector(commit_number: int) -> None:
        if failing.is_set():
            raise OSError(5, "Input/output error (injected fsync failure)")

    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        await client.send(post({"data": "kept"}))
        assert (await client.answer())[0] == 200
        failing.set()
        await client.send(post({"data": "lost"}) + post({"data": "refused"}))
        for _ in range(2):
            status, headers, body = await client.answer()
            assert status == 503
            assert headers["retry-after"] == "1"
            assert headers["content-type"] == "application/json"
            assert orjson.loads(body)["error"]
        await client.close()

    storage = Storage.open(tmp_path / "data", fault_injector=injector)
    serve(tmp_path, scenario, storage=storage)


def test_idempotency_keys_work_on_both_paths(tmp_path: Path) -> None:
    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        keyed = post({"data": "once"}, b"Idempotency-Key: k-1\r\n")
        await client.send(keyed + keyed)
        first = orjson.loads((await client.answer())[2])
        assert orjson.loads((await client.answer())[2]) == first
        # Through aiohttp (Connection: close is not served here): the same answer.
        await client.send(post({"data": "once"}, b"Idempotency-Key: k-1\r\nConnection: close\r\n"))
        status, headers, body = await client.answer()
        assert (status, orjson.loads(body)) == (200, first)
        assert headers["connection"] == "close"
        assert await client.closed_by_server()
        # A key over the limit: aiohttp's 400.
        client = await Client.connect(port)
        await client.send(post({"data": 1}, b"Idempotency-Key: " + b"k" * 257 + b"\r\n"))
        status, _, body = await client.answer()
        assert status == 400 and "Idempotency-Key" in orjson.loads(body)["error"]
        await client.close()

    serve(tmp_path, scenario)


def test_a_pipelining_flood_is_held_to_the_buffer_limit_and_all_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a write waits for its commit, pipelined requests pile up: past the door's
    buffer limit it stops reading (TCP pushes back on the client), and once the
    commit comes it reads again, answering every request in order."""
    commits = HeldCommits(tmp_path / "data", monkeypatch)
    pauses = []
    pause_reading = front_door.FrontConnection._pause_reading

    def counted_pause(connection: front_door.FrontConnection) -> None:
        pauses.append(len(connection._buffer))
        pause_reading(connection)

    monkeypatch.setattr(front_door.FrontConnection, "_pause_reading", counted_pause)
    count = 400
    flood = b"".join(post({"data": [number, "x" * 200]}) for number in range(count))

    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        commits.hold()
        assert len(flood) > 4 * (front_door.HEAD_BYTES_MAX + BODY_BYTES_MAX)  # over the limit
        client.writer.write(flood)  # not drained: the server stops reading
        await commits.committing()
        async with asyncio.timeout(TIMEOUT_S):  # it fills past its limit while held
            while not pauses:
                await asyncio.sleep(0)
        assert pauses[0] > 2 * (front_door.HEAD_BYTES_MAX + BODY_BYTES_MAX)
        commits.release()
        await client.writer.drain()
        numbers = [orjson.loads((await client.answer())[2])["data"][0] for _ in range(count)]
        assert numbers == list(range(count))
        await client.close()

    serve(tmp_path, scenario, storage=commits.storage)


# ------------------------------------------------------------------ handed to aiohttp

HANDED_OVER = [
    # (what, the request, the status aiohttp answers)
    (
        "chunked",
        b"POST /changes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"dat\r\n7\r\na":"c"}\r\n0\r\n\r\n',
        200,
    ),
    ("charset", post({"data": 1}).replace(b"json\r\n", b"json; charset=utf-8\r\n"), 200),
    ("query", post({"data": 1}, path=b"/changes?x=1"), 200),
    ("other type", post({"data": 1}).replace(b"application/json", b"text/plain"), 415),
    ("too large", post({"data": "x" * BODY_BYTES_MAX}), 413),
    ("empty", post_body(b""), 400),
    ("cross-site", post({"data": 1}, b"Sec-Fetch-Site: cross-site\r\n"), 403),
    ("expect", post({"data": 1}, b"Expect: 100-continue\r\n"), 100),
    ("other path", post({"data": 1}, path=b"/changes/1"), 405),
]


@pytest.mark.parametrize(
    ("what", "request_bytes", "status"), HANDED_OVER, ids=[h[0] for h in HANDED_OVER]
)
def test_requests_not_plain_are_answered_by_aiohttp(
    tmp_path: Path, what: str, request_bytes: bytes, status: int
) -> None:
    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        # A plain write first, then the other request on the same connection, then
        # another plain write: the hand-over keeps the order and the bytes.
        await client.send(post({"data": "before"}) + request_bytes + post({"data": "after"}))
        assert (await client.answer())[0] == 200
        answered, headers, body = await client.answer()
        if status == 100:  # Expect: the interim answer, then the write's
            assert answered == 100
            answered, headers, body = await client.answer()
            assert answered == 200
        else:
            assert answered == status, body
        assert headers["content-type"].startswith("application/json")
        if answered >= 400:
            assert orjson.loads(body)["error"]
        status_after, _, body = await client.answer()
        assert (status_after, orjson.loads(body)["data"]) == (200, "after")
        await client.close()

    serve(tmp_path, scenario)


def test_a_malformed_request_after_a_write_gets_aiohttps_400_and_close(tmp_path: Path) -> None:
    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        twice = post({"data": 1}, b"Content-Length: 11\r\n")  # two Content-Lengths
        await client.send(post({"data": "before"}) + twice + post({"data": "after"}))
        assert (await client.answer())[0] == 200
        assert (await client.answer())[0] == 400
        assert await client.closed_by_server()  # nothing after it is read as a request
        client = await Client.connect(port)
        await client.send(get(b"/changes?since=0"))
        page = orjson.loads((await client.answer())[2])
        assert [change["data"] for change in page["changes"]] == ["before"]
        await client.close()

    serve(tmp_path, scenario)


def test_http_1_0_and_connection_close_are_answered_and_closed(tmp_path: Path) -> None:
    async def scenario(port: int, listeners: Listeners) -> None:
        for request_bytes in (
            post({"data": 1}, version=b"1.0"),
            post({"data": 1}, b"Connection: close\r\n"),
        ):
            client = await Client.connect(port)
            await client.send(request_bytes)
            assert (await client.answer())[0] == 200
            assert await client.closed_by_server()
            await client.close()

    serve(tmp_path, scenario)


def test_basic_auth_is_checked_before_a_write(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    htpasswd(passwd, "alice", "s3cret-password", "-B")
    good = "Authorization: {}\r\n".format(basic("alice", "s3cret-password")["Authorization"])
    bad = "Authorization: {}\r\n".format(basic("alice", "wrong")["Authorization"])
    good_bytes = good.encode()

    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        await client.send(post({"data": "anonymous"}) + post({"data": "wrong"}, bad.encode()))
        for _ in range(2):
            status, headers, body = await client.answer()
            assert status == 401
            assert headers["www-authenticate"] == 'Basic realm="changeagent"'
            assert orjson.loads(body)["error"]
        # Right credentials twice: bcrypt once, then the cache.
        await client.send(post({"data": "one"}, good_bytes) + post({"data": "two"}, good_bytes))
        assert orjson.loads((await client.answer())[2])["data"] == "one"
        assert orjson.loads((await client.answer())[2])["data"] == "two"
        await client.send(b"GET /changes?since=0 HTTP/1.1\r\nHost: t\r\n%s\r\n" % good_bytes)
        status, _, body = await client.answer()
        assert [change["data"] for change in orjson.loads(body)["changes"]] == ["one", "two"]
        await client.close()

    serve(tmp_path, scenario, authenticator_file=passwd, password_file=passwd)


# ------------------------------------------------------------------ connections


def test_an_idle_connection_closes_after_the_keepalive_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(front_door, "KEEPALIVE_S", 0.3)

    async def scenario(port: int, listeners: Listeners) -> None:
        client = await Client.connect(port)
        await client.send(post({"data": 1}))
        assert (await client.answer())[0] == 200
        assert await client.closed_by_server()
        half = await Client.connect(port)  # half a request is no activity forever
        await half.send(post({"data": 1})[:20])
        assert await half.closed_by_server()

    serve(tmp_path, scenario)


def test_shutdown_answers_the_write_in_flight_and_closes_idle_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = HeldCommits(tmp_path / "data", monkeypatch)

    async def scenario(port: int, listeners: Listeners) -> None:
        idle = await Client.connect(port)
        await idle.send(post({"data": "idle"}))
        assert (await idle.answer())[0] == 200
        busy = await Client.connect(port)
        commits.hold()
        await busy.send(post({"data": "in flight"}))
        await commits.committing()
        stopping = asyncio.create_task(listeners.runner.cleanup())
        assert await idle.closed_by_server()
        commits.release()
        status, _, body = await busy.answer()
        assert (status, orjson.loads(body).get("data")) == (200, "in flight"), body
        assert await busy.closed_by_server()
        await stopping

    serve(tmp_path, scenario, storage=commits.storage)


# ------------------------------------------------------------------ the same answers


DIFFERENTIAL = [
    post({"data": {"a": [1, 2, 3]}, "type": 7, "tags": ["x", "y"]}),
    post({"data": "two"}) + post({"data": "three"}),
    post_body(b"[1]"),
    post({"type": 1.5}),
    post({"tags": "not a list"}),
    post({"data": "x" * 100}).replace(b"application/json", b"APPLICATION/JSON"),
    post({"data": "keyed"}, b"Idempotency-Key: same\r\n"),
    post({"data": "keyed"}, b"Idempotency-Key: same\r\n"),
    get(b"/changes?since=0"),
]


def test_the_answers_are_the_ones_aiohttp_gives(tmp_path: Path) -> None:
    """The same requests to a node with the front door and one without (--access-log):
    the same statuses, headers and bodies, but for Date and each change's _ts."""
    answers = []
    for name, arguments in (("door", []), ("aiohttp", ["--access-log"])):
        server = ServerProcess(tmp_path / name, arguments).start()
        try:
            answers.append(asyncio.run(_answers(server.port)))
        finally:
            server.kill()
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[0]][:3] == [200, 200, 200]


async def _answers(port: int) -> list[tuple[int, dict[str, str], bytes]]:
    client = await Client.connect(port)
    found = []
    for request_bytes in DIFFERENTIAL:
        await client.send(request_bytes)
        for _ in range(request_bytes.count(b" HTTP/1.1\r\n")):
            status, headers, body = await client.answer()
            headers.pop("date")
            found.append((status, headers, re.sub(rb'"_ts":\d+', b'"_ts":0', body)))
    await client.close()
    return found
