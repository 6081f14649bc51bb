"""Writes to the change list: proposals on the leader, forwarding on followers,
idempotency keys, web hooks.

On the leader a change is checked against the entry limit, validated by the web
hooks, proposed (its bytes built once its index is known, since they carry
their own `_id`) and answered once committed and applied. On a follower it is
forwarded to the leader and answered once this node has applied that index too.

Idempotency: a retry with the same `Idempotency-Key` gets the original answer.
A key is an answer only when found on an entry this node has applied (a deposed
leader's log may hold an uncommitted keyed entry that is later replaced). On the
leader, the first request with a key claims it before its first await, so a
retry arriving while the first attempt waits (on web hooks, on the commit)
waits for that attempt, up to the commit timeout, instead of proposing again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson

from changeagent.change import NewChange, encode_change, stored_bytes_max
from changeagent.node.driver import OnApplied
from changeagent.node.errors import NotAvailable, PayloadTooLarge
from changeagent.node.replica import Replica
from changeagent.node.webhooks import WebHookCaller
from changeagent.raft import Entry


class ChangeLog:
    """Writes through `replica`; see the module docstring."""

    def __init__(self, replica: Replica, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._replica = replica
        self.storage = replica.storage
        self.limits = replica.limits
        self._clock_ns = clock_ns
        self._last_timestamp_ns = 0
        self._claims: dict[str, asyncio.Future[Entry]] = {}
        self._web_hooks = WebHookCaller()

    async def close(self) -> None:
        await self._web_hooks.close()

    async def append_change(
        self, change: NewChange, key: str = "", on_applied: OnApplied | None = None
    ) -> bytes:
        """Store a change durably; return its stored bytes. Retries with `key` get the
        original. `on_applied(entry)`: called the moment a new change (no key) proposed
        here is applied, before this returns (see `RaftDriver.propose`), and for a
        write forwarded to the leader the moment this node applies the index the
        leader answered (`AppliedIndex.watch`), if it had not yet; never for a keyed
        write on the leader."""
        if key:
            existing = self._applied_for_key(key)
            if existing is not None:
                return existing
        replica = self._replica
        replica.check_writable()
        if replica.is_leader:
            entry = await self.propose_change(change, key, on_applied)  # checks the size
            return entry.data
        _check_fits(change, self.limits.entry_bytes_max)  # before it travels to the leader
        timeout_s = self.limits.commit_timeout_s
        answered: list[bytes] = []  # the stored change, once `on_applied` had it
        index = await replica.leader.forward_change(
            change, key, timeout_s, self._answer_watch(on_applied, answered)
        )
        await replica.wait_applied(index, timeout_s)
        return answered[0] if answered else self._stored_answer(index)

    def _answer_watch(
        self, on_applied: OnApplied | None, answered: list[bytes]
    ) -> Callable[[int], None] | None:
        """For a forwarded write: as the leader's answer (the index, committed) is read,
        have `on_applied` called with the stored change once this node applies it
        (kept in `answered`: not read again for the return). Registered then, not
        when this coroutine resumes a few loop iterations later: the commit notice
        that lets this node apply it comes right behind the answer, and its apply
        would otherwise come first, leaving the answer to the handler."""
        if on_applied is None:
            return None
        applied = self._replica.applied

        def answer(index: int) -> None:
            stored = self._stored_answer(index)
            answered.append(stored)
            on_applied(Entry(index, 0, 0, stored))

        def watch(index: int) -> None:
            applied.watch(index, lambda: answer(index))

        return watch

    async def propose_change(
        self, change: NewChange, key: str = "", on_applied: OnApplied | None = None
    ) -> Entry:
        """On the leader (also for writes forwarded by followers): web hooks,
        propose, wait until committed and applied. See the module docstring.
        `on_applied` is passed on for a change with no key (see `append_change`)."""
        await_commit = self._replica.await_commit
        if not key:
            return await await_commit(await self._proposal(change, "", on_applied))
        claim = self._claims.get(key)
        if claim is not None:
            return await await_commit(claim)
        claim = asyncio.get_running_loop().create_future()
        self._claims[key] = claim
        claim.add_done_callback(lambda _: self._release_claim(key, claim))
        try:
            proposal = await self._claimed_proposal(change, key)
        except BaseException as error:
            _fail_future(claim, error)
            raise
        _chain(proposal, claim)  # a timed-out first attempt still settles the claim
        return await await_commit(proposal)

    def _release_claim(self, key: str, claim: asyncio.Future[Entry]) -> None:
        if self._claims.get(key) is claim:
            del self._claims[key]

    async def _claimed_proposal(self, change: NewChange, key: str) -> asyncio.Future[Entry]:
        """The proposal for a claimed key: the stored entry when the key is already
        in the log, else a new proposal."""
        stored = await self._committed_on_leader(key)
        if stored is None:
            return await self._proposal(change, key)
        done: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        done.set_result(Entry(stored, 0, change.type, self._stored_answer(stored), key))
        return done

    async def _proposal(
        self, change: NewChange, key: str, on_applied: OnApplied | None = None
    ) -> asyncio.Future[Entry]:
        _check_fits(change, self.limits.entry_bytes_max)
        await self._web_hooks.validate(self._replica.settings.web_hooks, change)
        timestamp_ns = self._next_timestamp_ns()
        return self._replica.propose(
            change.type, lambda index: encode_change(index, timestamp_ns, change), key, on_applied
        )

    def _applied_for_key(self, key: str) -> bytes | None:
        """The change stored under `key`, if it is committed and applied here.

        A key found on an entry this node holds but has not applied is no answer:
        that entry may never commit (a deposed leader's suffix), so acknowledging
        it could acknowledge a write that is then lost (the nemesis found this).
        Such retries go on to the leader, which knows.
        """
        stored_index = self.storage.idempotency_lookup(key)
        if stored_index is None or stored_index > self._replica.applied.index:
            return None
        return self._stored_answer(stored_index)

    async def _committed_on_leader(self, key: str) -> int | None:
        """On the leader: the index of the entry holding `key`, once committed.

        An entry in the leader's own log commits as long as it leads (with the
        first entry of its term), so an uncommitted one is waited for, not
        proposed again (which would duplicate it)."""
        stored = self.storage.idempotency_lookup(key)
        if stored is None or stored <= self._replica.applied.index:
            return stored
        await self._replica.wait_applied(stored, self.limits.commit_timeout_s)
        return stored if self.storage.idempotency_lookup(key) == stored else None

    def _stored_answer(self, index: int) -> bytes:
        """The stored change at `index`, or `{"_id": index}` when a purge removed
        it in the meantime (the write still stands; never an empty body)."""
        stored = self.storage.get_change(index)
        return stored if stored is not None else orjson.dumps({"_id": index})

    def _next_timestamp_ns(self) -> int:
        # Never go backwards, even if the wall clock does: _ts is informational,
        # but consumers find a monotonic timestamp less surprising.
        self._last_timestamp_ns = max(self._clock_ns(), self._last_timestamp_ns + 1)
        return self._last_timestamp_ns


def _check_fits(change: NewChange, entry_bytes_max: int) -> None:
    size = stored_bytes_max(change)
    if size > entry_bytes_max:
        raise PayloadTooLarge(
            f"the change would take up to {size} bytes once stored (JSON re-encoded "
            f"compactly, with _id and _ts); the limit is {entry_bytes_max} bytes"
        )


def _chain(source: asyncio.Future[Entry], target: asyncio.Future[Entry]) -> None:
    """Settle `target` like `source`, when `source` settles."""

    def settle(_: asyncio.Future[Entry]) -> None:
        if target.done():
            return
        if source.cancelled():
            _fail_future(target, NotAvailable("the first attempt was cancelled; retry"))
        elif (error := source.exception()) is not None:
            _fail_future(target, error)
        else:
            target.set_result(source.result())

    source.add_done_callback(settle)


def _fail_future(future: asyncio.Future[Entry], error: BaseException) -> None:
    if future.done():
        return
    if not isinstance(error, Exception):  # cancelled: the waiters learn only that
        error = NotAvailable("the first attempt with this Idempotency-Key stopped; retry")
    future.set_exception(error)
    future.exception()  # marked retrieved: nobody may be waiting
