"""The membership, configuration and health-marking calls against real processes:
two standalone nodes joined into a cluster and parted again through the client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from changeagent.client import AsyncClient, BadRequest, Client
from tests.support.cluster import Cluster


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, 2)
    try:
        yield nodes.start()
    finally:
        nodes.stop()


def test_add_and_remove_members(pair: Cluster) -> None:
    first, second = pair.nodes
    with Client(f"http://127.0.0.1:{first.port}") as client:
        client.add_member(first.address)
        document = client.add_member(second.address)
        assert sorted(document["members"].values()) == sorted([first.address, second.address])
        pair.wait_converged()
        document = client.remove_member(second.node_id())
        assert list(document["members"].values()) == [first.address]
        with pytest.raises(BadRequest):
            client.remove_member("not an id")


def test_config_round_trip_and_mark_down_up(pair: Cluster) -> None:
    url = f"http://127.0.0.1:{pair.nodes[0].port}"
    with Client(url) as client:
        settings = yaml.safe_load(client.config())
        applied = yaml.safe_load(client.set_config("minPurgeRecords: 123456\n"))
        assert applied["minPurgeRecords"] == 123456 != settings.get("minPurgeRecords")
        assert yaml.safe_load(client.config())["minPurgeRecords"] == 123456
        assert client.mark(False) == {"up": False, "health": "marked down"}
        health = client.health()
        assert (health.ok, health.detail, health.url) == (False, "marked down", url)
        assert client.mark(True, url)["up"]
        assert client.health(0).ok


def test_async_admin_calls(pair: Cluster) -> None:
    async def run() -> None:
        async with AsyncClient(f"http://127.0.0.1:{pair.nodes[1].port}") as client:
            assert "minPurgeRecords" in await client.config()
            assert not (await client.mark(False))["up"]
            assert not (await client.health()).ok
            await client.mark(True)
            assert (await client.health()).ok

    asyncio.run(run())
