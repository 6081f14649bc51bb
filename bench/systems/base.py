"""What every system under test offers the scenarios.

A `System` starts its server processes (1 or more members) on loopback, knows how to
write one change, read the log from the start in pages of 100, wait for the next
change (long-poll, watch, XREAD BLOCK), find and kill its leader, and add a member.
Scenarios are written once against this interface, so every system is driven by the
same code and the same ~100-byte JSON payload.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import TEARDOWN_GRACE_SECONDS, Processes, SkipScenario, Started

# The same ~100-byte JSON document is stored by every system for every change.
PAYLOAD = (b'{"user":"u-0001234","action":"update","field":"email",'
           b'"value":"someone@example.com","pad":"xxxxxxx"}')
PAGE_SIZE = 100


class WriteFailed(Exception):
    """A write was not acknowledged as durable (error status, timeout, closed)."""


@dataclass
class Member:
    """One server process of a system."""

    index: int
    port: int  # client port (HTTP or RESP)
    data_dir: Path
    process: Started | None = None
    peer_port: int = 0
    # perf_counter time at which the cluster accepted this member (join scenario).
    joined_at: float = 0.0


class Subscription(ABC):
    """A consumer waiting for the next change on one connection.

    `arm()` makes sure a wait is pending on the server and returns a future that
    completes when the next change arrives; `arrived_at` is then the perf_counter time
    at which the bytes were received. `ready` (when not None) completes once the server
    has confirmed the wait (etcd's "created"); long-polls have no such confirmation.
    """

    arrived_at: float = 0.0
    ready: asyncio.Future[Any] | None = None

    @abstractmethod
    def arm(self) -> asyncio.Future[Any]: ...

    @abstractmethod
    def advance(self) -> int:
        """Parse what arrived, move the cursor past it; return how many changes arrived."""

    @abstractmethod
    def clone(self, connection: Any) -> Subscription:
        """The same wait (same cursor) on another connection (fan-out)."""

    @abstractmethod
    def close(self) -> None: ...


class System(ABC):
    """A system under test: changeagent, etcd or Redis."""

    name: str = "?"
    # The program this is: "changeagent" also for a pinned tree of it ("base", --base).
    family: str = "?"
    # A write that does not complete within this time counts as failed (failover uses it).
    write_timeout_seconds = 10.0

    def __init__(self, processes: Processes, members: int = 1) -> None:
        self.processes = processes
        self.member_count = members
        self.members: list[Member] = []
        self.base_dir: Path | None = None
        self.killed_at_stop: list[str] = []  # members dropped with SIGKILL (`_drop`)

    # Lifecycle

    @classmethod
    @abstractmethod
    def missing_reason(cls) -> str | None:
        """None when the system can run here, else a one-line reason."""

    @abstractmethod
    def start(self) -> None: ...

    def stop(self, report: Callable[[list[str]], None] | None = None) -> None:
        """Stop every member and remove the data, in the background (`Processes.retire`):
        SIGTERM, a short grace, then SIGKILL; `report` gets the names that needed SIGKILL.
        """
        try:
            groups = self.stop_groups()
        except (LookupError, OSError):
            groups = [[m for m in self.members if m.process is not None]]
        in_groups = {id(m) for group in groups for m in group}
        leftovers = [m for m in self.members if m.process is not None and id(m) not in in_groups]
        self.processes.retire(
            [[m.process for m in group if m.process is not None]
             for group in [*groups, leftovers] if group],
            self.base_dir, report)
        for member in self.members:
            member.process = None
        self.base_dir = None
        self.members = []

    def stop_groups(self) -> list[list[Member]]:
        """The running members in the order in which they are stopped, group by group
        (the members of a group stop together): by default all at once."""
        return [[m for m in self.members if m.process is not None]]

    def pids(self) -> list[int]:
        return [m.process.pid for m in self.members if m.process is not None and m.process.alive()]

    def __enter__(self) -> System:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart_member(self, index: int) -> None:
        """Stop a member gracefully and start it again on the same data (memory scenario)."""
        raise SkipScenario(f"{self.name}: restart not implemented")

    # Load

    def wrk_write(self, member: int | None = None) -> tuple[str, str, dict[str, str]] | None:
        """(url, Lua script name, extra environment) to drive writes with wrk, or None.

        `member` is the index of the member written to (default: the leader).
        """
        return None

    @abstractmethod
    async def connect(self, member: int | None = None) -> Any:
        """A client connection to a member (default: the leader, or the only member)."""

    @abstractmethod
    async def write(self, connection: Any, sequence: int) -> None:
        """Write one change durably; raise WriteFailed unless acknowledged."""

    @abstractmethod
    async def preload(self, count: int, deadline: float) -> int:
        """Store `count` changes as fast as possible (not measured); return how many."""

    @abstractmethod
    async def read_page(self, connection: Any, cursor: Any) -> tuple[int, Any]:
        """Read the next page of up to 100 changes after `cursor`: (count, new cursor)."""

    def start_cursor(self) -> Any:
        return 0

    @abstractmethod
    async def subscribe(self, connection: Any, from_end: bool = True) -> Subscription:
        """A subscription that waits for changes after the current end of the log."""

    def waiting_consumers(self, member: int = 0) -> int | None:
        """How many consumers the server says are waiting (fan-out: the waits are taken),
        or None when it cannot tell."""
        return None

    # Clusters

    def leader_index(self) -> int:
        """Index (into self.members) of the current leader; 0 for single-node systems."""
        return 0

    def follower_index(self) -> int:
        """Index of a live member that is not the leader (clusters only)."""
        leader = self.leader_index()
        for member in self.members:
            if member.index != leader and member.process is not None and member.process.alive():
                return member.index
        raise LookupError("no follower")

    def raft_terms(self) -> dict[int, int] | None:
        """Current Raft term of every live member, by index; None when not applicable.

        Compared before and after a write load: a term that grew means an election
        happened under load (spurious, since no member was stopped).
        """
        return None

    def wait_leader(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.leader_index()
            except LookupError:
                time.sleep(0.05)
        raise SkipScenario(f"{self.name}: no leader elected within {timeout:.0f} s")

    def kill_member(self, index: int) -> None:
        member = self.members[index]
        if member.process is not None:
            self.processes.kill9(member.process)
            member.process = None

    def add_member(self) -> Member:
        """Start a new member and add it to the running cluster."""
        raise SkipScenario(f"{self.name}: adding a member is not supported")

    def remove_member(self, member: Member) -> None:
        """Take an added member out of the cluster again, stop it and drop its data (the
        join scenario's next run adds a fresh one to the same preloaded cluster)."""
        raise SkipScenario(f"{self.name}: removing a member is not supported")

    def _drop(self, member: Member) -> None:
        """Stop one member (its data goes: short grace), forget it, remove its data."""
        if member.process is not None:
            self.killed_at_stop += self.processes.stop_many([member.process],
                                                            TEARDOWN_GRACE_SECONDS)
            member.process = None
        if member in self.members:
            self.members.remove(member)
        self.processes.remove_dir(member.data_dir)

    def member_has(self, member: Member, last_sequence: int, last_cursor: Any) -> bool:
        """True once `member` serves the last preloaded change (join scenario)."""
        raise SkipScenario(f"{self.name}: join check not implemented")

    def last_cursor(self) -> Any:
        """Cursor of the last preloaded change (what `member_has` looks for)."""
        raise SkipScenario(f"{self.name}: no cursor")


async def retry_write(system: System, sequence: int, member: int | None,
                      attempt_timeout: float) -> None:
    """One write on a fresh connection, bounded by `attempt_timeout` (failover scenario)."""
    connection = await asyncio.wait_for(system.connect(member), attempt_timeout)
    try:
        await asyncio.wait_for(system.write(connection, sequence), attempt_timeout)
    finally:
        connection.close()


async def concurrent_writes(system: System, count: int, concurrency: int, deadline: float,
                            member: int | None = None) -> int:
    """Preload helper: `concurrency` connections writing until `count` or the deadline."""
    next_sequence = 0
    done = 0

    async def worker() -> None:
        nonlocal next_sequence, done
        connection = await system.connect(member)
        try:
            while next_sequence < count and time.monotonic() < deadline:
                sequence = next_sequence
                next_sequence += 1
                await system.write(connection, sequence)
                done += 1
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done
