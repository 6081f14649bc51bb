"""Mirror against real processes: a full and a filtered copy match GET /changes, the
`latest` view, once and follow-until-stop, a reader seeing a consistent prefix while
the mirror writes, kill -9 of a mirror process and its restart, a filter mismatch,
and a purge gap."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest

from changeagent.client import Change, ChangesMissed, Client
from changeagent.client.mirror import FilterMismatch, Mirror, MirrorError, MirrorProgress
from tests.support.cluster import load_changes
from tests.support.server import ServerProcess, kill, wait_until


def server_changes(
    client: Client, tags: list[str] | None = None, type: int | None = None
) -> list[Change]:
    """Every change the server holds (matching the filter), page by page."""
    found: list[Change] = []
    since = 0
    while True:
        page = client.changes(since, limit=10_000, tags=tags or (), type=type)
        found += page.changes
        if page.at_end or not page.changes:
            return found
        since = page.changes[-1].id


def mirrored(path: Path) -> list[Change]:
    """The file's `changes` rows, read through their own connection, as Changes."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT id, ts, type, tags, data FROM changes ORDER BY id").fetchall()
    return [
        Change(id, ts, type, tuple(orjson.loads(tags)), orjson.loads(data))
        for id, ts, type, tags, data in rows
    ]


def meta_last_id(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT last_id FROM meta").fetchone()[0])


def latest(path: Path) -> dict[Any, tuple[int, Any]]:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT key, id, data FROM latest").fetchall()
    return {key: (id, orjson.loads(data)) for key, id, data in rows}


def row_count(path: Path) -> int:
    """How many changes the file holds; 0 while it or its tables do not exist yet."""
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM changes").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def wait_for_rows(path: Path, count: int, writer: subprocess.Popen[bytes]) -> None:
    """Until the file holds `count` changes, or its writer process has exited."""
    wait_until(lambda: row_count(path) >= count or writer.poll() is not None, 60)


class Following:
    """Mirror.sync() (follow mode, until `stop`) in a thread."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.stop = threading.Event()
        self.written: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.written = self.mirror.sync(stop=self.stop)
        except BaseException as error:
            self.error = error

    def finish(self, timeout_s: float) -> int:
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"sync did not end within {timeout_s} s of stop"
        assert self.error is None, repr(self.error)
        assert self.written is not None
        return self.written


def test_a_full_copy_matches_the_server(url: str, tmp_path: Path) -> None:
    path = tmp_path / "all.db"
    with Client(url) as client:
        client.post({"hello": "world"}, tags=["a", "b"], type=3)
        client.post(None)
        client.post([1, 2.5, "three", {"four": None}], tags=["a"])
        client.post("ünïcödé ✓", type=7)
        seen: list[MirrorProgress] = []
        with Mirror(client, path, limit=2) as mirror:
            written = mirror.sync(once=True, progress=seen.append)
            expected = server_changes(client)
            assert written == len(expected) >= 4
            assert mirrored(path) == expected
            assert mirror.last_id == meta_last_id(path) == expected[-1].id
            assert mirror.sync(once=True) == 0
            later = [client.post({"n": n}) for n in range(3)]
            assert mirror.sync(once=True) == 3
            assert mirrored(path) == [*expected, *later]
        assert seen[0] == MirrorProgress(0, 0, seen[0].end_id, 0.0)
        pages = list(range(2, written + 1, 2)) + ([written] if written % 2 else [])
        assert [p.synced for p in seen[1:]] == pages
        assert seen[-1].last_id == expected[-1].id and seen[-1].rate_per_s > 0
        assert seen[-1].end_id is not None and seen[-1].end_id >= expected[-1].id
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # The columns are usable from SQL: JSON text for tags and data.
        (tags,) = db.execute(
            "SELECT tags FROM changes WHERE json_extract(data, '$.hello') = 'world'"
        ).fetchone()
        assert orjson.loads(tags) == ["a", "b"]


def test_a_filtered_copy_holds_only_the_matching_changes(url: str, tmp_path: Path) -> None:
    one, two, other = (uuid.uuid4().hex for _ in range(3))
    with Client(url) as client:
        for n in range(12):
            client.post({"n": n}, tags=[(one, two, other)[n % 3]], type=n % 2)
        with Mirror(client, tmp_path / "tags.db", tags=[one, two], limit=3) as by_tags:
            assert by_tags.sync(once=True) == 8
        assert mirrored(tmp_path / "tags.db") == server_changes(client, tags=[one, two])
        path = tmp_path / "typed.db"
        with Mirror(client, path, tags=[two, one], type=1, limit=3) as typed:
            assert typed.sync(once=True) == 4
        expected = server_changes(client, tags=[one, two], type=1)
        assert mirrored(path) == expected
        assert [c.data["n"] for c in expected] == [1, 3, 7, 9]


def test_latest_keeps_the_newest_change_per_key(url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "latest.db"
    with Client(url) as client:
        posts = [
            {"name": "a", "v": 1},
            {"name": "b", "v": 1},
            {"v": "no name"},
            {"name": "a", "v": 2},
            {"name": 7, "v": 1},
            {"name": {"not": "a key"}, "v": 1},
            {"name": "a", "v": 3},
            "not an object",
            {"name": "b", "v": 2},
            {"name": "7", "v": 1},
            {"name": True, "v": 1},
        ]
        stored = [client.post(data, tags=[tag]) for data in posts]
        # Pages of 2 and of 4: updates of one key within a page and across pages.
        for limit in (2, 4):
            copy = tmp_path / f"latest{limit}.db"
            with Mirror(client, copy, tags=[tag], key_path="data.name", limit=limit) as mirror:
                assert mirror.sync(once=True) == len(posts)
            assert latest(copy) == {
                "a": (stored[6].id, {"name": "a", "v": 3}),
                "b": (stored[8].id, {"name": "b", "v": 2}),
                7: (stored[4].id, {"name": 7, "v": 1}),
                "7": (stored[9].id, {"name": "7", "v": 1}),
            }
            assert mirrored(copy) == stored  # changes without a key are still mirrored
        nested = [
            client.post({"config": {"key": k, "value": v}}, tags=[tag])
            for k, v in ("x1", "y2", "x3")
        ]
        with Mirror(client, path, tags=[tag], key_path="data.config.key") as mirror:
            mirror.sync(once=True)
            assert latest(path) == {
                "x": (nested[2].id, {"config": {"key": "x", "value": "3"}}),
                "y": (nested[1].id, {"config": {"key": "y", "value": "2"}}),
            }
            update = client.post({"config": {"key": "y", "value": "new"}}, tags=[tag])
            assert mirror.sync(once=True) == 1
        assert latest(path)["y"] == (update.id, {"config": {"key": "y", "value": "new"}})


def test_once_returns_at_the_end_and_follow_ends_on_stop(url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "follow.db"
    with Client(url) as client:
        first = [client.post(n, tags=[tag]) for n in range(3)]
        with Mirror(client, path, tags=[tag], block_s=1) as mirror:
            assert mirror.sync(once=True) == 3
            following = Following(mirror)
            later = [client.post(n, tags=[tag]) for n in range(3, 6)]
            wait_until(lambda: row_count(path) == 6, 20)
            # Idle now, inside a long poll of block_s = 1: stop ends it within about that
            # (8 s: a margin for a loaded machine).
            assert following.finish(timeout_s=8) == 3
            assert mirrored(path) == [*first, *later]
            stopped = threading.Event()
            stopped.set()
            assert mirror.sync(stop=stopped) == 0  # already set: returns at once


def test_a_reader_sees_a_consistent_prefix_while_it_writes(
    server: ServerProcess, url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "prefix.db"
    count = 1500
    observations: list[tuple[int, list[int]]] = []
    with Client(url) as client, Mirror(client, path, tags=[tag], limit=7, block_s=1) as mirror:
        following = Following(mirror)
        loader = threading.Thread(
            target=load_changes, args=(server.port, count), kwargs={"connections": 4, "tag": tag}
        )
        loader.start()
        with closing(sqlite3.connect(path, isolation_level=None)) as reader:

            def observe() -> bool:
                reader.execute("BEGIN")  # one snapshot for both reads
                (last_id,) = reader.execute("SELECT last_id FROM meta").fetchone()
                ids = [id for (id,) in reader.execute("SELECT id FROM changes ORDER BY id")]
                reader.execute("COMMIT")
                observations.append((last_id, ids))
                return len(ids) == count

            wait_until(observe, 120, 0.005)
        loader.join(60)
        assert following.finish(timeout_s=15) == count
        expected = [change.id for change in server_changes(client, tags=[tag])]
    assert len(expected) == count
    assert len({len(ids) for _, ids in observations}) > 5, "the reader saw too few states"
    for last_id, ids in observations:
        assert ids == expected[: len(ids)]  # a prefix, without a gap
        assert last_id == (ids[-1] if ids else 0)  # and meta.last_id in step with it


CHILD = """
import sys
from changeagent.client import Client
from changeagent.client.mirror import Mirror
url, path, tag = sys.argv[1:4]
with Client(url) as client, Mirror(client, path, tags=[tag], limit=20, block_s=1) as mirror:
    mirror.sync()
"""


def test_kill_9_of_the_mirror_and_restart_resume_without_gap_or_duplicate(
    server: ServerProcess, url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    path = tmp_path / "killed.db"
    count = 3000
    loader = threading.Thread(
        target=load_changes, args=(server.port, count), kwargs={"connections": 4, "tag": tag}
    )
    children: list[subprocess.Popen[bytes]] = []
    try:
        with open(tmp_path / "child.log", "wb") as log:
            loader.start()
            for reached in (count // 5, count // 2):
                child = subprocess.Popen(
                    [sys.executable, "-c", CHILD, url, str(path), tag], stderr=log
                )
                children.append(child)
                wait_for_rows(path, reached, child)
                assert child.poll() is None, (tmp_path / "child.log").read_text()
                kill(child)  # SIGKILL, mid-stream: the loader is still posting
                killed_at = mirrored(path)
                assert killed_at and meta_last_id(path) == killed_at[-1].id
        loader.join(120)
        assert not loader.is_alive()
        with Client(url) as client:
            with Mirror(client, path, tags=[tag]) as mirror:
                mirror.sync(once=True)
            expected = server_changes(client, tags=[tag])
        assert len(expected) == count
        assert mirrored(path) == expected
    finally:
        for child in children:
            kill(child)
        loader.join(120)


def test_another_filter_or_file_is_refused(url: str, tmp_path: Path) -> None:
    path = tmp_path / "filtered.db"
    with Client(url) as client:
        with Mirror(client, path, tags=["x", "y"], type=2, key_path="data.k") as mirror:
            mirror.sync(once=True)
        with Mirror(client, path, tags=["y", "x", "y"], type=2, key_path="data.k"):
            pass  # the same filter: tags are a set
        for other in (
            {"tags": ["x"], "type": 2, "key_path": "data.k"},
            {"tags": ["x", "y"], "type": None, "key_path": "data.k"},
            {"tags": ["x", "y"], "type": 2, "key_path": None},
            {"tags": ["x", "y"], "type": 2, "key_path": "data.other"},
        ):
            with pytest.raises(FilterMismatch, match=r"filtered\.db mirrors") as refused:
                Mirror(client, path, **other)
            assert isinstance(refused.value, ValueError)
        with pytest.raises(ValueError, match="key_path"):
            Mirror(client, tmp_path / "new.db", key_path="name")
        foreign = tmp_path / "foreign.db"
        with closing(sqlite3.connect(foreign)) as db:
            db.execute("CREATE TABLE things(x)")
        with pytest.raises(MirrorError, match="not a changeagent mirror"):
            Mirror(client, foreign)
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"this is not a database file, not at all" * 100)
        with pytest.raises(MirrorError, match="not a"):
            Mirror(client, garbage)
        mirror = Mirror(client, path, tags=["x", "y"], type=2, key_path="data.k")
        mirror.close()
        with pytest.raises(MirrorError, match="closed"):
            mirror.sync(once=True)


@pytest.fixture
def purging(tmp_path: Path) -> Iterator[str]:
    """One node that checks its purge rule every 50 ms; killed by pid after."""
    node = ServerProcess(tmp_path / "data", ["--purge-interval", "0.05"]).start()
    try:
        yield f"http://127.0.0.1:{node.port}"
    finally:
        node.kill()


def test_a_purge_gap_is_skipped_when_empty_and_raises_otherwise(
    purging: str, tmp_path: Path
) -> None:
    behind = tmp_path / "behind.db"
    with Client(purging) as client:
        posted = [client.post(n) for n in range(3)]
        with Mirror(client, behind) as mirror:
            assert mirror.sync(once=True) == 3
        posted += [client.post(n) for n in range(3, 12)]
        client.set_config("minPurgeRecords: 4\nminPurgeDuration: 1ms\n")

        def gap() -> bool:
            page = client.changes()
            return page.missed and (page.first_retained or 0) > posted[3].id

        wait_until(gap, 20, 0.05)
        client.set_config("minPurgeRecords: 0\nminPurgeDuration: 0s\n")  # purge no more
        retained = server_changes(client)
        assert retained and retained == posted[len(posted) - len(retained) :]

        # Non-empty and behind the gap: ChangesMissed, and the file is left as it was.
        with Mirror(client, behind) as mirror, pytest.raises(ChangesMissed) as raised:
            mirror.sync(once=True)
        assert raised.value.since == posted[2].id
        assert raised.value.first_retained is not None
        assert posted[3].id < raised.value.first_retained <= retained[0].id
        assert mirrored(behind) == posted[:3] and meta_last_id(behind) == posted[2].id
        # ...unless skip_missed: then it goes on after the gap.
        with Mirror(client, behind, skip_missed=True) as mirror:
            assert mirror.sync(once=True) == len(retained)
        assert mirrored(behind) == [*posted[:3], *retained]

        # An empty mirror silently starts at the first change still stored, in both modes.
        with Mirror(client, tmp_path / "fresh.db") as fresh:
            assert fresh.sync(once=True) == len(retained)
        assert mirrored(tmp_path / "fresh.db") == retained
        with Mirror(client, tmp_path / "fresh-follow.db", block_s=1) as fresh:
            following = Following(fresh)
            wait_until(lambda: row_count(tmp_path / "fresh-follow.db") == len(retained), 20)
            assert following.finish(timeout_s=15) == len(retained)
        assert mirrored(tmp_path / "fresh-follow.db") == retained


def test_a_held_section_keeps_the_sync_off_the_file(url: str, tmp_path: Path) -> None:
    """`sync(section=...)` reads and writes the file only while holding it, so the
    thread that takes it (`changeagent mirror` on SIGINT) may close the file."""
    tag = uuid.uuid4().hex
    path = tmp_path / "section.db"
    section = threading.Lock()
    with Client(url) as client:
        posted = [client.post(n, tags=[tag]) for n in range(3)]
        with Mirror(client, path, tags=[tag], limit=1) as mirror:
            section.acquire()
            done: list[int] = []
            worker = threading.Thread(
                target=lambda: done.append(mirror.sync(once=True, section=section))
            )
            worker.start()
            worker.join(0.3)  # a moment to let it try, not to synchronize
            assert worker.is_alive() and row_count(path) == 0
            section.release()
            worker.join(30)
            assert done == [3]
            assert mirrored(path) == posted
