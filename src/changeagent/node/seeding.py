"""Seeding a joining node with the leader's committed log, as a file.

Replaying a long log one APPEND at a time costs Python per entry on both ends
(reading and encoding on the leader; decoding, deriving fields, building rows
on the new node): about 110,000-150,000 entries/s here. A seed skips that: the
file a backup makes, sent whole and moved into place as the new node's database.

Leader (`SeedSender.send`, called by `ClusterMembership` between the join RPC
and the ADD_LEARNER proposal): when its log holds at least
`NodeLimits.seed_entries_min` entries, it makes the copy a backup makes
(`NodeBackups.session`: one read transaction, cut at the applied index, the
cluster secret dropped) and streams it to the
joined node over one-shot peer connections (it is no member yet, so there is
no link): `seed_begin`, `seed_chunk` in order, `seed_end` with the sha256. If
anything fails, the leader logs why and adds the node anyway: the log then goes
by APPENDs, as without a seed.

Joining node (`SeedReceiver`): only from a peer that proved the cluster secret,
so only after the join RPC; only while it is no member and holds no change of
its own; one seed at a time. Chunks are written in order into a staging file in
the data directory; at the end the size and the sha256 must match, the file is
fsynced and checked (`storage.seed.inspect_seed`), then installed
(`ClusterMembership.adopt_seed` -> `Replica.adopt_seed`) and removed.

A seed holds only committed entries, and a committed entry is the same on every
member, so it is a prefix of every later leader's log: the leader's usual probe
finds where the new node's log ends and replicates from there.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from changeagent.node.backup import BackupCopy, NodeBackups
from changeagent.node.backup import remove_leftovers as remove_temporary_files
from changeagent.node.errors import BadRequest, Conflict, NodeError, NotAvailable
from changeagent.node.replica import Replica
from changeagent.storage import StorageError, schema
from changeagent.storage.seed import inspect_seed
from changeagent.transport import PeerUnavailable, RequestFailed

if TYPE_CHECKING:
    from changeagent.node.membership import ClusterMembership
    from changeagent.transport import RpcValue, Transport

log = logging.getLogger(__name__)

METHODS = ("seed_begin", "seed_chunk", "seed_end")
CHUNK_BYTES = 4 * 1024 * 1024  # at most half a frame
CALL_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 600.0  # seed_end: the node checks, fsyncs and installs the file
STAGING_PREFIX = "seed-"
STAGING_SUFFIX = ".db.tmp"
# The staging file becomes the database; room for it twice over (the WAL and the
# log grow beside it).
DISK_ROOM_FACTOR = 2


class SeedSender:
    """The leader's side; see the module docstring."""

    def __init__(self, replica: Replica, backups: NodeBackups) -> None:
        self._replica = replica
        self._backups = backups

    def worth_it(self) -> bool:
        """Whether the committed log is long enough to send as a file."""
        replica = self._replica
        entries_min = replica.limits.seed_entries_min
        entries = replica.applied.index - replica.storage.snapshot().index
        return entries_min > 0 and entries >= entries_min

    async def send(self, transport: Transport, address: str) -> bool:
        """Seed the joined node at `address` if worth it; whether it was seeded.
        Failures are logged, not raised: the node can catch up by APPENDs."""
        if not self.worth_it():
            return False
        started = time.monotonic()
        try:
            async with self._backups.session(verify=False) as copy:
                last_index = await _stream(transport, address, copy)
        except (NodeError, PeerUnavailable, RequestFailed, OSError) as error:
            log.warning(
                "could not seed the node at %s (%s); it catches up by replication",
                address,
                error,
            )
            return False
        self._replica.counters.seeds_sent += 1
        log.info(
            "seeded the node at %s with the log up to index %d in %.2f s",
            address,
            last_index,
            time.monotonic() - started,
        )
        return True


async def _stream(transport: Transport, address: str, copy: BackupCopy) -> int:
    size = copy.path.stat().st_size
    header = copy.header
    begin: dict[str, RpcValue] = {"bytes": size, "schema_version": header.schema_version}
    await transport.call_address(address, "seed_begin", begin, timeout_s=CALL_TIMEOUT_S)
    chunk_bytes = min(CHUNK_BYTES, transport.config.frame_bytes_max // 2)
    digest = hashlib.sha256()
    offset = 0
    with copy.path.open("rb") as file:
        while chunk := await asyncio.to_thread(_read_chunk, file, chunk_bytes, digest):
            payload: dict[str, RpcValue] = {"offset": offset, "data": chunk}
            await transport.call_address(address, "seed_chunk", payload, timeout_s=CALL_TIMEOUT_S)
            offset += len(chunk)
    end: dict[str, RpcValue] = {"bytes": offset, "sha256": digest.digest()}
    _, _, answer = await transport.call_address(
        address, "seed_end", end, timeout_s=INSTALL_TIMEOUT_S
    )
    return int(answer) if isinstance(answer, int) else header.commit_index


def _read_chunk(file: IO[bytes], size: int, digest: Any) -> bytes:
    chunk = file.read(size)
    digest.update(chunk)  # hashlib releases the GIL: on the worker thread with the read
    return chunk


@dataclass(slots=True)
class _Incoming:
    path: Path
    size: int
    file: IO[bytes]
    digest: Any
    written: int = 0


class SeedReceiver:
    """The joining node's side; see the module docstring."""

    def __init__(self, replica: Replica, membership: ClusterMembership) -> None:
        self._replica = replica
        self._membership = membership
        self._incoming: _Incoming | None = None
        self._lock = asyncio.Lock()

    async def handle(self, method: str, payload: Any) -> RpcValue:
        """Answer `seed_begin`, `seed_chunk` or `seed_end` (one at a time)."""
        if not isinstance(payload, dict):
            raise BadRequest(f"malformed {method} request")
        async with self._lock:
            if method == "seed_begin":
                await self._begin(payload)
                return None
            if method == "seed_chunk":
                await self._chunk(payload)
                return None
            return await self._end(payload)

    async def _begin(self, payload: dict[Any, Any]) -> None:
        self._membership.check_seedable()
        size, version = payload.get("bytes"), payload.get("schema_version")
        if not isinstance(size, int) or size <= 0:
            raise BadRequest("seed_begin: bytes must be a positive integer")
        if version != schema.SCHEMA_VERSION:
            raise BadRequest(
                f"seed_begin: storage schema {version!r}, this node has {schema.SCHEMA_VERSION}"
            )
        await self._discard()
        data_dir = self._replica.storage.data_dir
        free = (await asyncio.to_thread(shutil.disk_usage, data_dir)).free
        if free < DISK_ROOM_FACTOR * size:
            raise NotAvailable(f"a seed of {size} bytes needs more room than the {free} free")
        path = data_dir / f"{STAGING_PREFIX}{secrets.token_hex(8)}{STAGING_SUFFIX}"
        file = await asyncio.to_thread(_create, path)
        self._incoming = _Incoming(path, size, file, hashlib.sha256())

    async def _chunk(self, payload: dict[Any, Any]) -> None:
        incoming = self._expect()
        offset, data = payload.get("offset"), payload.get("data")
        if not isinstance(data, bytes) or offset != incoming.written:
            raise BadRequest(f"seed_chunk: expected the bytes at offset {incoming.written}")
        if incoming.written + len(data) > incoming.size:
            raise BadRequest(f"seed_chunk: more than the {incoming.size} bytes announced")
        await asyncio.to_thread(_write_chunk, incoming.file, data, incoming.digest)
        incoming.written += len(data)

    async def _end(self, payload: dict[Any, Any]) -> RpcValue:
        incoming = self._expect()
        if incoming.written != incoming.size or payload.get("bytes") != incoming.size:
            raise BadRequest(f"seed_end: {incoming.written} of {incoming.size} bytes arrived")
        if payload.get("sha256") != incoming.digest.digest():
            await self._discard()
            raise BadRequest("seed_end: the seed's sha256 does not match; it was discarded")
        try:
            await asyncio.to_thread(_sync_and_close, incoming.file)
            try:
                seed = await asyncio.to_thread(inspect_seed, incoming.path)
            except StorageError as error:
                raise BadRequest(f"seed_end: {error}") from None
            await self._membership.adopt_seed(seed)
        finally:
            await self._discard()
        return seed.last_index

    def _expect(self) -> _Incoming:
        if self._incoming is None:
            raise Conflict("no seed is being received: seed_begin first")
        return self._incoming

    async def _discard(self) -> None:
        """Drop the seed being received, and any a killed process left behind."""
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            incoming.file.close()
        await asyncio.to_thread(remove_leftovers, self._replica.storage.data_dir)


def remove_leftovers(data_dir: Path) -> None:
    """Staging files of seeds a killed process was receiving."""
    remove_temporary_files(data_dir, STAGING_PREFIX, STAGING_SUFFIX)


def _create(path: Path) -> IO[bytes]:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(descriptor, "wb")


def _write_chunk(file: IO[bytes], data: bytes, digest: Any) -> None:
    file.write(data)
    digest.update(data)


def _sync_and_close(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()
