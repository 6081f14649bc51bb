"""Disk faults seen through the HTTP API: fail-stop writes, 503 JSON, nothing unacknowledged
visible; corrupted data is refused and reported, never served."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from aiohttp.test_utils import TestClient, TestServer

from changeagent.api.app import build_app
from changeagent.config import Settings
from changeagent.node.node import Node, NodeLimits
from changeagent.storage import Storage
from tests.support.server import ServerProcess

JSON = {"Content-Type": "application/json"}


async def with_client(storage: Storage, body: Callable[[TestClient], Awaitable[None]]) -> None:
    node = Node(storage, Settings(), None, NodeLimits())
    await node.start()
    client = TestClient(TestServer(build_app(node), host="127.0.0.1"))
    await client.start_server()
    try:
        await body(client)
    finally:
        await client.close()
        await node.close()  # the server orders this at shutdown; here the test does
        storage.close()


def test_fsync_failure_fails_stop_with_503(tmp_path: Path) -> None:
    failing = {"on": False}

    def injector(commit_number: int) -> None:
        if failing["on"]:
            raise OSError(5, "Input/output error (injected fsync failure)")

    async def scenario(client: TestClient) -> None:
        ok = await client.post("/changes", data=b'{"data":"kept"}', headers=JSON)
        assert ok.status == 200
        kept = await ok.json()
        failing["on"] = True
        failed = await client.post("/changes", data=b'{"data":"lost"}', headers=JSON)
        assert failed.status == 503
        assert "not stored" in (await failed.json())["error"]
        failing["on"] = False  # the disk "recovers": the node must still refuse (no fsync retry)
        again = await client.post("/changes", data=b'{"data":"later"}', headers=JSON)
        assert again.status == 503
        assert again.headers["Retry-After"]
        health = await client.get("/health")
        assert health.status == 503
        listing = await (await client.get("/changes")).json()
        assert listing["changes"] == [kept], "nothing unacknowledged becomes visible"

    asyncio.run(with_client(Storage.open(tmp_path / "d", fault_injector=injector), scenario))


def test_real_disk_full_gives_503(tmp_path: Path) -> None:
    # max_page_count caps the database file, so SQLite itself reports SQLITE_FULL.
    storage = Storage.open(tmp_path / "d", sqlite_pragmas={"max_page_count": 64})

    async def scenario(client: TestClient) -> None:
        statuses = []
        body = orjson.dumps({"data": "x" * 2000})
        for _ in range(200):
            response = await client.post("/changes", data=body, headers=JSON)
            statuses.append(response.status)
            if response.status != 200:
                assert response.status == 503
                assert "error" in await response.json()
                break
        assert statuses[-1] == 503, "the small database never filled up"
        acknowledged = statuses.count(200)
        listing = await (await client.get("/changes?limit=1000")).json()
        assert len(listing["changes"]) == acknowledged

    asyncio.run(with_client(storage, scenario))


def corrupt_entry(data_dir: Path, index: int) -> None:
    database = next(path for path in data_dir.iterdir() if path.suffix == ".db")
    with sqlite3.connect(database) as connection:
        changed = connection.execute(
            "UPDATE entries SET body = ? WHERE idx = ?", (b'{"_id":3,"_ts":1,"data":"evil"}', index)
        ).rowcount
    assert changed == 1


def test_corruption_found_at_start_refuses_to_serve(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d").start()
    rotten = server.post_change({"data": "will rot"}).json()
    assert server.stop() == 0
    corrupt_entry(tmp_path / "d", rotten["_id"])
    result = subprocess.run(
        [sys.executable, "-m", "changeagent", "-p", "0", "-d", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"checksum mismatch in entry {rotten['_id']}" in result.stderr
    assert "Traceback" not in result.stderr


def test_corruption_found_while_serving_is_refused_and_reported(tmp_path: Path) -> None:
    async def prepare() -> list[int]:
        storage = Storage.open(tmp_path / "d")
        ids: list[int] = []

        async def write(client: TestClient) -> None:
            for n in range(3):
                response = await client.post(
                    "/changes", data=orjson.dumps({"data": n}), headers=JSON
                )
                ids.append((await response.json())["_id"])

        await with_client(storage, write)
        return ids

    ids = asyncio.run(prepare())
    corrupt_entry(tmp_path / "d", ids[1])

    async def scenario(client: TestClient) -> None:
        response = await client.get(f"/changes?since={ids[0]}")
        assert response.status == 503
        body = await response.text()
        assert "corrupt" in body and "evil" not in body
        assert (await client.get(f"/changes/{ids[1]}")).status == 503
        assert (await client.get("/health")).status == 503

    # No warm tail: reads go to SQLite, where every row's checksum is verified.
    storage = Storage.open(tmp_path / "d", tail_warm_bytes=0)
    asyncio.run(with_client(storage, scenario))
