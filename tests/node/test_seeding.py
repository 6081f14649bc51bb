"""The joining node's side of a seed (`SeedReceiver`), in process: what it refuses
and what it adopts (the log, the applied index, the replicated settings)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest

from changeagent.cli.serve import build_parser, options_from_arguments
from changeagent.config import ConfigError, Settings
from changeagent.node.errors import BadRequest, Conflict, NodeError, NotAvailable
from changeagent.node.node import Node, NodeLimits
from changeagent.node.seeding import STAGING_PREFIX, SeedReceiver
from changeagent.node.settings_entry import encode_settings
from changeagent.raft import ENTRY_TYPE_CONFIG, ENTRY_TYPE_NOOP, Entry, HardState
from changeagent.storage import Storage, WriteBatch, schema
from changeagent.storage.backup import copy_committed
from changeagent.storage.seed import inspect_seed

LEADER = 22
CHANGES = 50
SEEDED_SETTINGS = Settings(min_purge_records=12_345)


def _seed_file(tmp_path: Path) -> bytes:
    """A leader's committed copy: a no-op, its settings, then CHANGES changes."""
    member = Storage.open(tmp_path / "leader")
    try:
        entries = [
            Entry(1, 4, ENTRY_TYPE_NOOP, b""),
            Entry(2, 4, ENTRY_TYPE_CONFIG, encode_settings(SEEDED_SETTINGS)),
        ] + [Entry(i, 4, 0, b'{"_id":%d,"data":{"n":%d}}' % (i, i)) for i in range(3, 3 + CHANGES)]
        last = entries[-1].index
        hard_state = HardState(term=5, vote=LEADER, commit=last)
        member.submit(WriteBatch(entries=entries, hard_state=hard_state)).result(10)
        copy = tmp_path / "copy.db"
        copy_committed(member.data_dir, copy, last, ())
    finally:
        member.close()
    return copy.read_bytes()


def _run(tmp_path: Path, scenario: Any) -> None:
    async def main() -> None:
        storage = Storage.open(tmp_path / "joining")
        leftover = storage.data_dir / f"{STAGING_PREFIX}0123.db.tmp"  # a killed process's
        leftover.write_bytes(b"half a seed")
        node = Node(storage, Settings(), None, NodeLimits(commit_timeout_s=10))
        await node.start()
        try:
            assert not leftover.exists()
            await scenario(node, SeedReceiver(node.replica, node.cluster))
        finally:
            await node.close()
            storage.close()

    asyncio.run(main())


async def _join(node: Node) -> None:
    payload = {
        "cluster_id": 777,
        "secret": b"s" * 32,
        "members": {str(LEADER): "127.0.0.1:9"},
        "voters": [LEADER],
        "learners": [],
    }
    await node.cluster.join(payload)


def _begin(size: int) -> dict[str, Any]:
    return {"bytes": size, "schema_version": schema.SCHEMA_VERSION}


def _staged(node: Node) -> list[Path]:
    return sorted(node.storage.data_dir.glob(f"{STAGING_PREFIX}*"))


def test_a_joined_node_adopts_a_seed(tmp_path: Path) -> None:
    data = _seed_file(tmp_path)

    async def scenario(node: Node, seeds: SeedReceiver) -> None:
        await _join(node)
        await seeds.handle("seed_begin", _begin(len(data)))
        half = len(data) // 2
        await seeds.handle("seed_chunk", {"offset": 0, "data": data[:half]})
        await seeds.handle("seed_chunk", {"offset": half, "data": data[half:]})
        end = {"bytes": len(data), "sha256": hashlib.sha256(data).digest()}
        assert await seeds.handle("seed_end", end) == 2 + CHANGES
        assert (node.storage.first_index(), node.storage.last_index()) == (1, 2 + CHANGES)
        assert node.replica.applied.index == 2 + CHANGES
        assert node.storage.hard_state() == HardState(term=5, vote=0, commit=2 + CHANGES)
        assert node.settings.min_purge_records == SEEDED_SETTINGS.min_purge_records
        assert node.counters().seeded_entries == 2 + CHANGES
        assert _staged(node) == []
        # Not a member yet, so a restart of the same join may seed it again.
        assert node.cluster.describe()["has_changes"] is False  # type: ignore[index]

    _run(tmp_path, scenario)


def test_what_a_seed_receiver_refuses(tmp_path: Path) -> None:
    data = _seed_file(tmp_path)
    digest = hashlib.sha256(data).digest()

    async def refused(seeds: SeedReceiver, kind: type[NodeError], method: str, **payload: Any):
        with pytest.raises(kind):
            await seeds.handle(method, payload)

    async def scenario(node: Node, seeds: SeedReceiver) -> None:
        # Standalone (no join yet): no seed.
        with pytest.raises(Conflict, match="not joined"):
            await seeds.handle("seed_begin", _begin(len(data)))
        await _join(node)
        await refused(seeds, Conflict, "seed_chunk", offset=0, data=data)
        await refused(seeds, BadRequest, "seed_begin", bytes=len(data), schema_version=99)
        await refused(seeds, BadRequest, "seed_begin", bytes=0, schema_version=1)
        with pytest.raises(BadRequest, match="malformed"):
            await seeds.handle("seed_begin", [1, 2])
        await seeds.handle("seed_begin", _begin(len(data)))
        assert len(_staged(node)) == 1
        await refused(seeds, BadRequest, "seed_chunk", offset=5, data=data)
        await refused(seeds, BadRequest, "seed_chunk", offset=0, data=data + b"x")
        await refused(seeds, BadRequest, "seed_end", bytes=len(data), sha256=digest)  # short
        await seeds.handle("seed_chunk", {"offset": 0, "data": data})
        await refused(seeds, BadRequest, "seed_end", bytes=len(data), sha256=b"\0" * 32)
        assert _staged(node) == []  # a wrong sha256 discards the seed
        await refused(seeds, Conflict, "seed_chunk", offset=len(data), data=b"")
        # A file that is not a committed log is refused after it arrived whole.
        junk = b"not a database at all" * 100
        await seeds.handle("seed_begin", _begin(len(junk)))
        await seeds.handle("seed_chunk", {"offset": 0, "data": junk})
        with pytest.raises(BadRequest, match="seed"):
            await seeds.handle(
                "seed_end", {"bytes": len(junk), "sha256": hashlib.sha256(junk).digest()}
            )
        assert _staged(node) == [] and node.storage.last_index() == 0
        assert node.failure is None

    _run(tmp_path, scenario)


def test_a_seed_the_storage_refuses_leaves_the_node_running(tmp_path: Path) -> None:
    _seed_file(tmp_path)

    async def scenario(node: Node, seeds: SeedReceiver) -> None:
        await _join(node)
        seed = inspect_seed(tmp_path / "copy.db")
        with pytest.raises(NotAvailable, match="the seed was not installed"):
            await node.replica.adopt_seed(dataclasses.replace(seed, path=tmp_path))
        assert node.failure is None and not node.replica.core_driver.stopped
        assert node.storage.last_index() == 0
        await node.replica.adopt_seed(seed)  # the same, whole: installed
        assert node.storage.last_index() == 2 + CHANGES

    _run(tmp_path, scenario)


def test_the_seed_threshold_flag() -> None:
    def seed_entries_min(*flags: str) -> int:
        options = options_from_arguments(build_parser().parse_args(list(flags)))
        return options.limits.seed_entries_min

    assert seed_entries_min() == 10_000
    assert seed_entries_min("--seed-entries", "0") == 0  # never
    assert seed_entries_min("--seed-entries", "500") == 500
    with pytest.raises(ConfigError, match="--seed-entries must not be negative"):
        seed_entries_min("--seed-entries", "-1")
