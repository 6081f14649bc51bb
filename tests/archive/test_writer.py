"""ArchiveWriter and the reader: appends read back in order; segments close by size
and by age; a crash at every durable step of every append and close loses nothing
that was reported and duplicates nothing once the writer reopens and goes on."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import orjson
import pytest

from changeagent.archive import (
    ArchiveCorrupt,
    ArchiveError,
    ArchiveInUse,
    ArchiveWriter,
    read_changes,
    read_listing,
    verify_segment,
)
from changeagent.archive import writer as writer_module
from changeagent.archive.format import MANIFEST, OPEN_STATE


def body(change_id: int, tags: tuple[str, ...] = ()) -> bytes:
    document: dict[str, object] = {"_id": change_id, "_ts": 1_700_000_000_000_000_000 + change_id}
    if change_id % 4 == 0:
        document["type"] = 3
    if tags:
        document["tags"] = list(tags)
    document["data"] = {"n": change_id, "pad": "x" * (change_id % 50)}
    return orjson.dumps(document)


def changes(ids: range | list[int]) -> list[tuple[int, bytes]]:
    return [
        (change_id, body(change_id, ("even",) if change_id % 2 == 0 else ())) for change_id in ids
    ]


def archived_ids(directory: Path, since: int = 0) -> list[int]:
    return [document["_id"] for document in read_changes(directory, since)]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def test_appends_read_back_in_order_with_filters(directory: Path) -> None:
    writer = ArchiveWriter.open(directory)
    try:
        assert writer.append(changes(range(2, 50, 3))) == 16
        assert writer.append(changes([60, 61])) == 2
        assert writer.last_id == 61
        with pytest.raises(ValueError, match="does not follow"):
            writer.append(changes([61]))
    finally:
        writer.close()
    assert archived_ids(directory) == [*range(2, 50, 3), 60, 61]
    assert archived_ids(directory, since=47) == [60, 61]
    documents = list(read_changes(directory, tags=["even"], type=3))
    assert [document["_id"] for document in documents] == [8, 20, 32, 44, 60]
    # zcat reads a segment's members as one stream of the stored bytes.
    with gzip.open(directory / read_listing(directory).segments[0].file) as segment:
        lines = [line.rstrip(b"\n") for line in segment]
    assert lines == [payload for _, payload in changes([*range(2, 50, 3), 60, 61])]
    assert oct(directory.stat().st_mode & 0o777) == "0o700"


def test_segments_close_by_size_and_by_age(directory: Path) -> None:
    now = [0]
    writer = ArchiveWriter.open(
        directory, segment_bytes_max=200, segment_age_max_ns=1000, clock_ns=lambda: now[0]
    )
    try:
        for first in range(1, 200, 20):
            writer.append(changes(range(first, first + 20)))
        listing = read_listing(directory)
        assert len(listing.closed) == 10 and listing.open is None  # each append filled one
        writer = _reopen(writer, directory, segment_bytes_max=10**9, now=now)
        writer.append(changes([300]))
        now[0] = 999
        writer.append(changes([301]))
        assert read_listing(directory).open is not None
        now[0] = 1000  # the open segment is an hour old (here: 1000 ns): closed first
        writer.append(changes([302]))
        listing = read_listing(directory)
        assert [segment.last for segment in listing.closed[-1:]] == [301]
        assert listing.open is not None and (listing.open.first, listing.open.last) == (302, 302)
    finally:
        writer.close()
    assert archived_ids(directory) == [*range(1, 201), 300, 301, 302]
    for segment in read_listing(directory).segments:
        verify_segment(directory, segment)


def _reopen(
    writer: ArchiveWriter, directory: Path, segment_bytes_max: int, now: list[int]
) -> ArchiveWriter:
    writer.close()
    return ArchiveWriter.open(
        directory,
        segment_bytes_max=segment_bytes_max,
        segment_age_max_ns=1000,
        clock_ns=lambda: now[0],
    )


def test_one_writer_per_directory(directory: Path) -> None:
    writer = ArchiveWriter.open(directory)
    try:
        with pytest.raises(ArchiveInUse):
            ArchiveWriter.open(directory)
    finally:
        writer.close()
    ArchiveWriter.open(directory).close()


class Crash(Exception):
    """A crash injected at one durable step."""


def _durable_steps(monkeypatch: pytest.MonkeyPatch, crash_at: int) -> list[int]:
    """Count fsyncs and renames; raise Crash at number `crash_at` (before it happens)."""
    count = [0]
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def counted(real):  # type: ignore[no-untyped-def]
        def step(*arguments):  # type: ignore[no-untyped-def]
            count[0] += 1
            if count[0] == crash_at:
                raise Crash(crash_at)
            return real(*arguments)

        return step

    monkeypatch.setattr(writer_module.os, "fsync", counted(real_fsync))
    monkeypatch.setattr(writer_module.os, "rename", counted(real_rename))
    monkeypatch.setattr(writer_module.os, "replace", counted(real_replace))
    return count


BATCHES = [range(1, 30), range(30, 31), range(40, 90), range(90, 95), range(100, 140)]


def _run(directory: Path, reported: list[int]) -> None:
    """Append the batches not yet archived (as a restarted node does: only ids above
    what the archive holds), recording what each append reported durable."""
    writer = ArchiveWriter.open(directory, segment_bytes_max=900)
    try:
        for batch in BATCHES:
            fresh = [change_id for change_id in batch if change_id > writer.last_id]
            if fresh:
                writer.append(changes(fresh))
                reported.extend(fresh)
    finally:
        writer.close()


def test_a_crash_at_any_durable_step_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = [change_id for batch in BATCHES for change_id in batch]
    crash_at = 0
    while True:  # every fsync and rename of the run, in turn, until a run has no crash
        crash_at += 1
        directory = tmp_path / f"crash-{crash_at}"
        reported: list[int] = []
        _durable_steps(monkeypatch, crash_at)
        try:
            _run(directory, reported)
            crashed = False
        except Crash:
            crashed = True
        monkeypatch.undo()
        # Everything reported is archived, and what is archived is a prefix of what
        # was appended (an append that was cut off may or may not count).
        writer = ArchiveWriter.open(directory)
        held = archived_ids(directory)
        writer.close()
        assert held[: len(reported)] == reported, crash_at
        assert held == expected[: len(held)], crash_at
        # The "restarted node" goes on: in the end, every change exactly once, in order.
        _run(directory, [])
        assert archived_ids(directory) == expected, crash_at
        listing = read_listing(directory)
        for segment in listing.segments:
            verify_segment(directory, segment)
        assert not list(directory.glob(".tmp-*"))
        open_files = sorted(path.name for path in directory.glob("open-*"))
        assert open_files == ([listing.open.file] if listing.open else []), crash_at
        if not crashed:
            break
    assert crash_at > 20  # the run has that many durable steps: each was a crash point


def test_a_failed_write_makes_the_writer_unusable_until_reopened(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = ArchiveWriter.open(directory)
    writer.append(changes(range(1, 10)))

    def full(*arguments: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module, "_replace_file", full)
    with pytest.raises(OSError, match="No space"):
        writer.append(changes(range(10, 20)))
    monkeypatch.undo()
    with pytest.raises(ArchiveError, match="open it again"):
        writer.append(changes(range(10, 20)))
    writer.close()
    writer = ArchiveWriter.open(directory)  # recovery cuts the unrecorded append off
    assert writer.last_id == 9
    writer.append(changes(range(10, 20)))
    writer.close()
    assert archived_ids(directory) == list(range(1, 20))


def test_damage_is_reported_not_served(directory: Path) -> None:
    writer = ArchiveWriter.open(directory, segment_bytes_max=200)
    writer.append(changes(range(1, 20)))
    writer.append(changes(range(20, 22)))
    writer.close()
    listing = read_listing(directory)
    closed = directory / listing.closed[0].file
    data = bytearray(closed.read_bytes())
    data[len(data) // 2] ^= 1
    closed.write_bytes(bytes(data))
    with pytest.raises(ArchiveCorrupt, match="SHA-256"):
        list(read_changes(directory))
    assert archived_ids(directory, since=listing.closed[0].last)  # later segments still read
    # An open segment shorter than its record is refused when the writer opens.
    if listing.open is not None:
        opened = directory / listing.open.file
        opened.write_bytes(opened.read_bytes()[:-1])
        with pytest.raises(ArchiveCorrupt, match="its record says"):
            ArchiveWriter.open(directory)


def test_a_manifest_line_cut_by_a_crash_is_ignored_then_repaired(directory: Path) -> None:
    writer = ArchiveWriter.open(directory, segment_bytes_max=200)
    writer.append(changes(range(1, 20)))
    writer.close()
    manifest = directory / MANIFEST
    intact = manifest.read_bytes()
    with manifest.open("ab") as file:
        file.write(b'{"file": "changes-0000')
    assert archived_ids(directory) == list(range(1, 20))  # readers ignore it
    ArchiveWriter.open(directory).close()  # the writer cuts it off
    assert manifest.read_bytes() == intact
    assert not (directory / OPEN_STATE).exists()
