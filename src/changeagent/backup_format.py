"""The backup file (`GET /backup`, `changeagent backup`, `changeagent restore`).

One file, self-verifying, readable in one pass:

    CHANGEAGENT-BACKUP 1\\n                 magic line
    {"format": 1, ..., "databaseBytes": N}\\n  header: one JSON line (BackupHeader)
    <N bytes>                               the SQLite database (committed prefix)
    SHA256 <64 hex digits>\\n                trailer: SHA-256 of everything above

Why a trailer: the server streams the database while it hashes it, so the
checksum is known only at the end; putting it in an HTTP header would need a
second pass over the copy (or HTTP trailers, which few clients read). Why the
length in the header: a short file is then told apart from a damaged one
("truncated: 1,000 of 5,000 bytes"), and the checksum sits at a known offset.
The checksum covers the magic and the header too, so no field can be edited
unnoticed.

`BackupVerifier` checks a stream fed in chunks of any size (no I/O: the client
feeds it what it downloads, restore what it reads); `finish()` names the first
problem: not a backup, truncated, or corrupted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

MAGIC = b"CHANGEAGENT-BACKUP 1\n"
FORMAT_VERSION = 1
HEADER_BYTES_MAX = 16 * 1024  # the JSON header line, newline included
TRAILER_PREFIX = b"SHA256 "
TRAILER_BYTES = len(TRAILER_PREFIX) + 64 + 1
CONTENT_TYPE = "application/vnd.changeagent.backup"


class BackupError(ValueError):
    """The file is not a usable backup; the message says why, for people."""


class NotABackup(BackupError):
    """The bytes do not start like a backup file (or its header is unreadable)."""


class BackupTruncated(BackupError):
    """The file ends before the length its header announces."""


class BackupCorrupted(BackupError):
    """The checksum does not match, or bytes follow the trailer."""


@dataclass(frozen=True, slots=True)
class BackupHeader:
    """What a backup says about itself. Ids are base 36, as the API shows them.

    `commit_index`: the last log index in the copy; every entry up to it is
    committed and nothing after it is in the file. `last_change_id`: the newest
    change's `_id` (0 if none); `changes`: how many changes the copy holds."""

    created_ns: int
    node_id: str
    cluster_id: str
    commit_index: int
    first_index: int
    changes: int
    first_change_id: int
    last_change_id: int
    database_bytes: int
    schema_version: int
    software_version: str

    def encode(self) -> bytes:
        """The magic line and the header line."""
        document = {
            "format": FORMAT_VERSION,
            "createdNs": self.created_ns,
            "nodeId": self.node_id,
            "clusterId": self.cluster_id,
            "commitIndex": self.commit_index,
            "firstIndex": self.first_index,
            "changes": self.changes,
            "firstChangeId": self.first_change_id,
            "lastChangeId": self.last_change_id,
            "databaseBytes": self.database_bytes,
            "schemaVersion": self.schema_version,
            "softwareVersion": self.software_version,
        }
        return MAGIC + orjson.dumps(document) + b"\n"

    @property
    def total_bytes(self) -> int:
        """The whole file's size."""
        return len(self.encode()) + self.database_bytes + TRAILER_BYTES

    @classmethod
    def decode(cls, line: bytes) -> BackupHeader:
        """Parse the header line (without the magic); NotABackup when malformed."""
        try:
            document = orjson.loads(line)
            if not isinstance(document, dict):
                raise TypeError("the header is not a JSON object")
            if document.get("format") != FORMAT_VERSION:
                raise ValueError(f"unknown backup format {document.get('format')!r}")
            return cls(
                created_ns=_integer(document, "createdNs"),
                node_id=str(document["nodeId"]),
                cluster_id=str(document["clusterId"]),
                commit_index=_integer(document, "commitIndex"),
                first_index=_integer(document, "firstIndex"),
                changes=_integer(document, "changes"),
                first_change_id=_integer(document, "firstChangeId"),
                last_change_id=_integer(document, "lastChangeId"),
                database_bytes=_integer(document, "databaseBytes"),
                schema_version=_integer(document, "schemaVersion"),
                software_version=str(document["softwareVersion"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise NotABackup(f"its header is unreadable ({error})") from None


def _integer(document: dict[str, Any], key: str) -> int:
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return int(value)


def trailer(digest: bytes) -> bytes:
    """The last line, given the SHA-256 digest of everything before it."""
    return TRAILER_PREFIX + digest.hex().encode() + b"\n"


class BackupVerifier:
    """Feed a backup's bytes in order (any chunk sizes), then `finish()`.

    Memory stays bounded: the header (at most HEADER_BYTES_MAX) and the trailer
    are buffered, the database only hashed. `database_chunks` of `feed` tells a
    caller which bytes belong to the database (restore writes those to disk).
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._head = bytearray()  # magic and header, until the header line is complete
        self.header: BackupHeader | None = None
        self._database_left = 0
        self._trailer = bytearray()
        self._extra_bytes = 0
        self.bytes_seen = 0

    def feed(self, data: bytes) -> list[memoryview]:
        """Take the next bytes; returns the parts of them that are database bytes."""
        self.bytes_seen += len(data)
        view = memoryview(data)
        if self.header is None:
            view = self._feed_head(view)
            if self.header is None:
                return []
        database: list[memoryview] = []
        if self._database_left and view:
            part = view[: self._database_left]
            self._hash.update(part)
            self._database_left -= len(part)
            database.append(part)
            view = view[len(part) :]
        if view:
            room = TRAILER_BYTES - len(self._trailer)
            self._trailer += view[:room]
            self._extra_bytes += max(0, len(view) - room)
        return database

    def _feed_head(self, view: memoryview) -> memoryview:
        """Buffer the magic and header line; the rest of `view` once both are in."""
        before = len(self._head)
        self._head += view[: HEADER_BYTES_MAX + len(MAGIC) - before]
        if not self._head.startswith(MAGIC[: len(self._head)]):
            raise NotABackup("it does not start like a changeagent backup")
        end = self._head.find(b"\n", len(MAGIC))
        if end < 0:
            if len(self._head) >= HEADER_BYTES_MAX + len(MAGIC):
                raise NotABackup("its header line is too long")
            return view[len(view) :]
        head = bytes(self._head[: end + 1])
        header = BackupHeader.decode(head[len(MAGIC) : -1])
        if header.encode() != head:
            raise NotABackup("its header is not in the canonical form")
        self._hash.update(head)
        self.header = header
        self._database_left = header.database_bytes
        return view[end + 1 - before :]

    def finish(self) -> BackupHeader:
        """The header, once every byte was there and the checksum matched;
        otherwise the error that describes the file."""
        header = self.header
        if header is None:
            if len(self._head) < len(MAGIC):
                raise NotABackup("it does not start like a changeagent backup")
            raise BackupTruncated(f"it ends inside its header ({self.bytes_seen} bytes)")
        if self._database_left or len(self._trailer) < TRAILER_BYTES:
            raise BackupTruncated(
                f"it has {self.bytes_seen:,} of the {header.total_bytes:,} bytes its header "
                "announces"
            )
        if self._extra_bytes:
            raise BackupCorrupted(f"{self._extra_bytes:,} bytes follow its end")
        if bytes(self._trailer) != trailer(self._hash.digest()):
            raise BackupCorrupted("its SHA-256 checksum does not match its contents")
        return header

    @property
    def sha256(self) -> str:
        """The checksum computed so far (the whole file's, after `finish`)."""
        return self._hash.hexdigest()
