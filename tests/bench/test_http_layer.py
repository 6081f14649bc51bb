"""`python -m bench.http_layer` runs a real changeagent whose members also serve POST
/changes through a bare protocol, posts to both with wrk, and prints both figures.
The bare path must store real changes in the same log, or the comparison means
nothing; it is a measurement, so only its figures' sanity is checked."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import orjson
from bench.http_layer import BareWrites

from changeagent.change import NewChange

REPO = Path(__file__).resolve().parents[2]


class _FakeNode:
    """Applies each change at the next index, as a leader's `on_applied` would, after
    a suspension; counts how many writes of the connection were in flight at once."""

    def __init__(self) -> None:
        self.stored: list[NewChange] = []
        self.in_flight = self.in_flight_max = 0

    async def append_change(self, change: NewChange, key: str, on_applied: object) -> bytes:
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        await asyncio.sleep(0)  # a real write suspends before it is applied
        self.stored.append(change)
        data = orjson.dumps({"_id": len(self.stored), "data": orjson.loads(change.data_json)})
        assert callable(on_applied)
        on_applied(SimpleNamespace(data=data))
        self.in_flight -= 1
        return data


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def get_extra_info(self, name: str, default: object = None) -> object:
        return _Socket() if name == "socket" else default


class _Socket:
    def setsockopt(self, *arguments: object) -> None:
        pass


def _post(body: bytes) -> bytes:
    return (b"POST /changes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def test_pipelined_writes_are_stored_and_answered_in_order() -> None:
    asyncio.run(_pipelined_writes())


async def _pipelined_writes() -> None:
    node, transport = _FakeNode(), _Transport()
    protocol = BareWrites(node)
    protocol.connection_made(transport)
    stream = _post(b'{"data": {"n": 1}}') + _post(b'{"data": {"n": 2}}') + _post(b'{"n": 3}')
    protocol.data_received(stream[:30])  # a request may arrive in pieces
    protocol.data_received(stream[30:])
    for _ in range(20):
        await asyncio.sleep(0)
    assert [orjson.loads(change.data_json) for change in node.stored] == [
        {"n": 1}, {"n": 2}, {"n": 3}]
    assert node.in_flight_max == 1  # one request after another, as HTTP/1.1 answers go
    answers = bytes(transport.written).split(b"HTTP/1.1 200 OK")[1:]
    assert len(answers) == 3
    assert [orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["_id"] for answer in answers] == [
        1, 2, 3]


def test_the_tool_measures_the_three_paths_on_a_real_node() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.http_layer", "--clients", "1", "--rounds", "1",
         "--seconds", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=180)  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    found = re.search(
        r"1 member\(s\), 1 client\(s\): aiohttp ([\d,]+) writes/s .*; door ([\d,]+) writes/s "
        r".*; bare ([\d,]+) writes/s .*; door/aiohttp ([\d.]+)x; bare/door ([\d.]+)x", output)
    assert found is not None, output
    assert all(int(found[group].replace(",", "")) > 0 for group in (1, 2, 3)), output
