"""GET /backup: this node's committed log as one backup file (`backup_format.py`),
streamed while the node keeps serving.

The copy is made first (`NodeBackups.session`, on a worker thread: the loop never
waits on it), so its size is known and the answer has a Content-Length; then the
magic and header, the database in 1 MiB chunks (read and hashed on a worker
thread), and the SHA-256 trailer. The copy is removed when the answer ends, also
when the client goes away or takes nothing for BACKUP_SEND_TIMEOUT_S (its
connection is then reset), or when the node shuts down (the answer is cut short:
the client's check of the length and checksum refuses it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from changeagent.api.context import state_of
from changeagent.api.feeds import reset
from changeagent.backup_format import CONTENT_TYPE, trailer
from changeagent.node.backup import BackupCopy

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# A client that takes nothing for this long is dropped (it holds the only backup slot).
BACKUP_SEND_TIMEOUT_S = 120.0


async def get_backup(request: web.Request) -> web.StreamResponse:
    node = state_of(request).node
    async with node.backups.session() as copy:
        head = copy.header.encode()
        response = web.StreamResponse(
            headers={
                "Content-Type": CONTENT_TYPE,
                "Content-Length": str(copy.header.total_bytes),
                "Content-Disposition": f'attachment; filename="{_file_name(copy)}"',
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        digest = hashlib.sha256(head)
        if await _send(request, response, head) and await _send_database(
            request, response, copy.path, digest
        ):
            await _send(request, response, trailer(digest.digest()))
            await response.write_eof()
        return response


def _file_name(copy: BackupCopy) -> str:
    header = copy.header
    return f"changeagent-{header.node_id}-{header.commit_index}.backup"


async def _send_database(
    request: web.Request, response: web.StreamResponse, path: Path, digest: hashlib._Hash
) -> bool:
    node = state_of(request).node
    with path.open("rb") as file:
        while True:
            chunk = await asyncio.to_thread(_read_hashed, file, digest)
            if not chunk:
                return True
            if node.closing:
                _cut_short(request, "the node is shutting down")
                return False
            if not await _send(request, response, chunk):
                return False


def _read_hashed(file: BinaryIO, digest: hashlib._Hash) -> bytes:
    chunk = file.read(CHUNK_BYTES)
    digest.update(chunk)
    return chunk


async def _send(request: web.Request, response: web.StreamResponse, data: bytes) -> bool:
    """Write, or drop a client that is gone or takes nothing."""
    try:
        await asyncio.wait_for(response.write(data), BACKUP_SEND_TIMEOUT_S)
    except TimeoutError:
        _cut_short(request, f"no data taken in {BACKUP_SEND_TIMEOUT_S:g} s")
        return False
    except ConnectionError:
        return False
    return True


def _cut_short(request: web.Request, reason: str) -> None:
    log.info("backup to %s cut short: %s", request.remote, reason)
    if request.transport is not None:
        reset(request.transport)
