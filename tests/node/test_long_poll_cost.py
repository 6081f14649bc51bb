"""A waiting long-poll costs the event loop a bounded amount of work per commit,
whatever its filters (issue 11, bug 2): no SQLite read runs on the loop thread
for it, a heavy check goes to a worker thread once (not once per commit), and a
group woken at the tail is still answered inside `notify`."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from changeagent.change import parse_change_body
from changeagent.config import Settings
from changeagent.node.node import Node, NodeLimits
from changeagent.node.query import ChangeQuery, PageResult
from changeagent.node.waiters import CommitWaiters
from changeagent.storage import Storage, schema

BLOCK_S = 600.0  # far beyond the test's deadline: only a wake-up ends the wait
DEADLINE_S = 30.0
TAGGED = b'{"tags":["common"],"data":1}'  # tagged like the poll, of another type
# The Raft core's own log reads (entries, terms), from SQLite when there is no tail.
RAFT_READS = tuple(
    f"SELECT idx, term, type, key, body, crc FROM entries WHERE {condition}"
    for condition in ("idx = ", "idx >= ", "type < 0 ")
)


class Probe:
    """Watches the node's CommitWaiters and the SQL its reading connections run on the
    event loop's thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loop_thread = threading.get_ident()
        self.loop_statements: list[str] = []
        self.waiters: list[CommitWaiters] = []
        self.in_notify = False
        connect_reader = schema.connect_reader
        init, notify = CommitWaiters.__init__, CommitWaiters.notify

        def traced(data_dir: Path) -> sqlite3.Connection:
            connection = connect_reader(data_dir)
            connection.set_trace_callback(self._record)
            return connection

        def record_init(waiters: CommitWaiters, *args: Any) -> None:
            init(waiters, *args)
            self.waiters.append(waiters)

        def flag_notify(waiters: CommitWaiters, commit_index: int) -> None:
            self.in_notify = True
            try:
                notify(waiters, commit_index)
            finally:
                self.in_notify = False

        monkeypatch.setattr(schema, "connect_reader", traced)
        monkeypatch.setattr(CommitWaiters, "__init__", record_init)
        monkeypatch.setattr(CommitWaiters, "notify", flag_notify)

    def _record(self, statement: str) -> None:
        if threading.get_ident() == self.loop_thread and not statement.startswith(RAFT_READS):
            self.loop_statements.append(statement)


async def append(node: Node, body: bytes, count: int = 1) -> None:
    for _ in range(count):
        await node.append_change(parse_change_body(body))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def run_node(
    tmp_path: Path, tail_cache_bytes: int | None, scenario: Callable[[Node], Awaitable[None]]
) -> None:
    async def main() -> None:
        if tail_cache_bytes is None:
            storage = Storage.open(tmp_path / "d")
        else:
            storage = Storage.open(tmp_path / "d", tail_cache_bytes=tail_cache_bytes)
        node = Node(storage, Settings(), None, NodeLimits())
        await node.start()
        try:
            await asyncio.wait_for(scenario(node), DEADLINE_S)
        finally:
            await node.close()
            storage.close()

    asyncio.run(main())


@pytest.mark.parametrize("tail_cache_bytes", [None, 0], ids=["default-tail", "no-tail"])
def test_tag_and_type_long_poll_reads_no_sqlite_on_the_loop_per_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail_cache_bytes: int | None
) -> None:
    probe = Probe(monkeypatch)

    async def scenario(node: Node) -> None:
        # More tagged changes than the tail scan budget (256) and the atStart probe (64).
        await asyncio.gather(*(append(node, TAGGED, 60) for _ in range(10)))
        delivered: list[tuple[PageResult, bool]] = []

        def hook(page: PageResult) -> bool:
            delivered.append((page, probe.in_notify))
            return True

        async def poll() -> PageResult:
            query = ChangeQuery(since=5, tags=("common",), type=7)
            return await node.wait_changes(query, BLOCK_S, hook)

        waiting = asyncio.create_task(poll())
        (waiters,) = probe.waiters
        await until(lambda: len(waiters) == 1)
        probe.loop_statements.clear()
        thread_reads = waiters.thread_reads
        await append(node, TAGGED, 20)  # the tag, not the type
        await append(node, b'{"tags":["other"],"type":7,"data":3}')  # the type, not the tag
        assert probe.loop_statements == []
        assert not waiting.done()
        if tail_cache_bytes is None:  # the new entries are in the tail: no thread at all
            assert waiters.thread_reads == thread_reads
        await append(node, b'{"tags":["common"],"type":7,"data":"wanted"}')
        page = await waiting
        assert probe.loop_statements == []
        assert len(page.bodies) == 1 and b'"wanted"' in page.bodies[0]
        assert page.at_start and page.at_end and not page.missed
        assert [answer for answer, _ in delivered] == [page]
        if tail_cache_bytes is None:  # woken at the tail: answered inside notify
            assert delivered[0][1] and waiters.delivered == 1

    run_node(tmp_path, tail_cache_bytes, scenario)


def test_a_slow_check_is_one_thread_read_for_many_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no tail every check needs SQLite: while a group's thread read runs, further
    commits start no other read; the one read, then one more for what committed
    meanwhile, cover them all."""
    probe = Probe(monkeypatch)
    release = threading.Event()

    async def scenario(node: Node) -> None:
        (waiters,) = probe.waiters
        read = waiters._read
        reads: list[int] = []

        def slow_read(*args: Any) -> PageResult:
            reads.append(args[1])
            release.wait(DEADLINE_S)  # hold the first read until the commits are in
            return read(*args)

        waiters._read = slow_read
        await append(node, TAGGED, 5)
        waiting = asyncio.create_task(
            node.wait_changes(ChangeQuery(since=2, tags=("common",), type=7), BLOCK_S)
        )
        await until(lambda: len(waiters) == 1)
        await append(node, TAGGED, 10)
        assert len(reads) == 1  # ten commits, one read in a thread
        await append(node, b'{"tags":["common"],"type":7,"data":"wanted"}')
        release.set()
        page = await waiting
        assert len(page.bodies) == 1 and b'"wanted"' in page.bodies[0]
        assert len(reads) == 2 and probe.loop_statements == []

    run_node(tmp_path, 0, scenario)
