"""The backup file format: written and read back whole, in chunks of any size and a
byte at a time; truncated, corrupted and foreign files are told apart."""

from __future__ import annotations

import hashlib

import pytest

from changeagent.backup_format import (
    MAGIC,
    TRAILER_BYTES,
    BackupCorrupted,
    BackupHeader,
    BackupTruncated,
    BackupVerifier,
    NotABackup,
    trailer,
)

DATABASE = bytes(range(256)) * 40 + b"the end"


def header(database: bytes = DATABASE) -> BackupHeader:
    return BackupHeader(
        created_ns=1_796_000_000_000_000_000,
        node_id="abc",
        cluster_id="0",
        commit_index=42,
        first_index=1,
        changes=30,
        first_change_id=2,
        last_change_id=41,
        database_bytes=len(database),
        schema_version=1,
        software_version="0.1.0",
    )


def backup_file(database: bytes = DATABASE) -> bytes:
    head = header(database).encode()
    return head + database + trailer(hashlib.sha256(head + database).digest())


def verify(data: bytes, chunk_bytes: int) -> tuple[BackupHeader, bytes]:
    verifier = BackupVerifier()
    database = bytearray()
    for start in range(0, len(data), chunk_bytes):
        for part in verifier.feed(data[start : start + chunk_bytes]):
            database += part
    return verifier.finish(), bytes(database)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 4096, 1 << 20])
def test_a_whole_file_verifies_in_chunks_of_any_size(chunk_bytes: int) -> None:
    data = backup_file()
    assert len(data) == header().total_bytes
    found, database = verify(data, chunk_bytes)
    assert found == header()
    assert database == DATABASE


def test_an_empty_database_is_a_valid_backup() -> None:
    found, database = verify(backup_file(b""), 3)
    assert found.database_bytes == 0 and database == b""


@pytest.mark.parametrize("cut", [0, 5, len(MAGIC) + 10, 1000, -TRAILER_BYTES, -1])
def test_a_truncated_file_is_refused_as_truncated(cut: int) -> None:
    data = backup_file()[:cut]
    with pytest.raises((BackupTruncated, NotABackup)) as raised:
        verify(data, 100)
    if cut > len(MAGIC) or cut < 0:
        assert isinstance(raised.value, BackupTruncated)
    if cut < 0:
        assert f"of the {len(backup_file()):,} bytes" in str(raised.value)


@pytest.mark.parametrize("position", ["database", "trailer", "header-value"])
def test_a_changed_byte_is_refused_as_corrupted(position: str) -> None:
    data = bytearray(backup_file())
    head_bytes = len(header().encode())
    offset = {
        "database": head_bytes + 1234,
        "trailer": len(data) - 5,
        "header-value": data.index(b"42"),  # commitIndex 42 -> 43: same length
    }[position]
    # One bit: a digit stays a digit (42 -> 43, a hex digit -> another one).
    data[offset] ^= 1
    with pytest.raises(BackupCorrupted, match="checksum"):
        verify(bytes(data), 999)


def test_bytes_after_the_trailer_are_refused() -> None:
    with pytest.raises(BackupCorrupted, match="3 bytes follow"):
        verify(backup_file() + b"xyz", 50)


def test_something_else_is_not_a_backup() -> None:
    with pytest.raises(NotABackup):
        verify(b"SQLite format 3\x00" + bytes(200), 10)
    with pytest.raises(NotABackup):
        verify(b"", 1)
    broken_header = MAGIC + b'{"format": 1}\n' + bytes(100)
    with pytest.raises(NotABackup, match="header"):
        verify(broken_header, 10)
    endless_header = MAGIC + b"{" + b" " * 20_000
    with pytest.raises(NotABackup, match="too long"):
        verify(endless_header, 1000)
