"""RaftDriver: the one place where the pure Raft core meets I/O.

It owns a `RaftNode` and runs two tasks under the node's supervisor:

- the ticker calls `core.tick()` every `tick_s` (the heartbeat interval), and
- the Ready loop: propose what is queued (one batch, so every peer gets one
  APPEND for all of it), then for each Ready execute the steps
  `ReadyPlanner.plan` lays out (send, persist in one storage write with one
  fsync, send what needed the write, apply; see `ready_plan` for the order and
  why), serve confirmed reads, `advance()`. Whatever is proposed during a
  write rides the next one: group commit. The simulator executes the same
  plans against simulated storage.

A member's message that makes a Ready is handled in `step`'s own call instead
when the loop is not at one (`_handle_now`): that saves a loop iteration on the
path of every write. Readys are still handled one at a time, in order: the loop
skips a wake-up while `step`'s handling runs, and is woken again after it.

Writes are proposed as (type, build, key): `build(index)` makes the entry's
bytes once the index is known, because a change's stored JSON carries its
own `_id`. A proposal's future resolves when its entry is applied here with
the term it was proposed in; an entry of another term at that index means
the proposal was lost to a leadership change.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from changeagent.eager import start_now
from changeagent.node.commit_notices import HOLD_S, CommitNotices, Timer
from changeagent.node.counters import RuntimeCounters
from changeagent.node.errors import NotAvailable, Overloaded, PayloadTooLarge
from changeagent.node.ready_plan import (
    Apply,
    NoteCommit,
    Persist,
    ReadyPlanner,
    Send,
    Step,
    send_during_write,
)
from changeagent.raft import (
    ConfChange,
    Entry,
    MembershipChangeRejected,
    Message,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    RaftNode,
    Ready,
    Role,
    Snapshot,
)
from changeagent.storage import Storage, StorageBusy, StorageError, StorageFailed, WriteBatch

log = logging.getLogger(__name__)

# Stopping, how long to wait for the writer thread to finish a Persist the Ready
# loop was cancelled in: its writes are then answered "stored", not "may have been".
SETTLE_S = 5.0
# A proposal is handled in `propose`'s own call only while the moving mean of the
# proposals per batch (weight 1/BATCH_MEAN_WEIGHT for the newest) stays at most this.
BATCH_MEAN_WEIGHT = 8
LONE_BATCH_MEAN_MAX = 1.25

Build = Callable[[int], bytes]
# Called with a proposal's entry the moment it is applied here, before its future's
# waiter resumes (see `RaftDriver.propose`). Must be quick and must not raise.
OnApplied = Callable[[Entry], None]
ApplyEntries = Callable[[tuple[Entry, ...]], Awaitable[None]]
InstallSnapshot = Callable[[Snapshot], Awaitable[None]]
SendMessage = Callable[[Message], None]
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


@dataclass(slots=True)
class _Proposal:
    entry_type: int
    build: Build
    key: str
    future: asyncio.Future[Entry]
    index: int = 0
    term: int = 0
    on_applied: OnApplied | None = None


@dataclass(frozen=True, slots=True)
class DriverHooks:
    """What the driver calls back into the node for."""

    send: SendMessage
    apply: ApplyEntries  # committed entries, in order, after they are durable
    install_snapshot: InstallSnapshot  # a snapshot from the leader replaced the log
    on_role_change: Callable[[Role, int | None], None]
    # Storage meta to write in the same transaction as a leader's snapshot.
    snapshot_meta: Callable[[Snapshot], Mapping[str, bytes]]
    # After `advance()`, when the core counts this Ready's entries as applied:
    # work that needs them applied in the core too (compaction for a purge).
    after_advance: Callable[[], Awaitable[None]]
    # After the driver sends: what the transport held back to join later writes in
    # this loop iteration goes now (`Transport.send_held`).
    send_held: Callable[[], None] = lambda: None


class RaftDriver:
    """Drives one Raft core over `storage`; see the module docstring."""

    def __init__(
        self,
        storage: Storage,
        config: RaftConfig,
        tick_s: float,
        hooks: DriverHooks,
        *,
        applied: int,
        pending_max: int,
        rng: random.Random | None = None,
        counters: RuntimeCounters | None = None,
    ) -> None:
        self.storage = storage
        self.counters = counters if counters is not None else RuntimeCounters()
        rng = rng or random.Random()
        self.core = RaftNode(config, storage, storage.hard_state(), rng, applied=applied)
        self.tick_s = tick_s
        self._hooks = hooks
        self._pending_max = pending_max
        self._queued: list[_Proposal] = []
        self._proposed: dict[int, _Proposal] = {}  # index -> proposal awaiting apply
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        # A random epoch per driver: a late READ_INDEX_RESPONSE meant for the core
        # this node ran before a join or a leave must never answer a new read.
        self._read_epoch = rng.getrandbits(64).to_bytes(8, "big")
        self._read_ids = itertools.count(1)
        self._wakeup = asyncio.Event()
        self._after_advance_due = False  # request_after_advance: run the hook once more
        self._tasks: list[asyncio.Task[None]] = []
        self._planner = ReadyPlanner(storage.hard_state())
        self._notices = CommitNotices()
        self._notices_due: asyncio.TimerHandle | None = None
        self._after_send: list[Callable[[], None]] = []  # see `after_send`
        self._callback_error: Exception | None = None
        # Readys are handled one at a time, by the Ready loop or in `step` itself
        # (`_handle_now`); `_handling` says one of them is at it.
        self._handling = False
        self._skipped = False  # the loop woke while `_handle_now` was at it
        self._eager: asyncio.Task[None] | None = None  # the rest of a `_handle_now`
        self.failure: str | None = None
        self.stopped = False
        # The last entry index of a Persist handed to the storage and not yet back
        # (0: none). Cancelled mid-write, the batch stays with the writer thread and
        # may still be stored: `_fail_waiting` must not say it was not.
        self._persisting_through = 0
        # Proposals per batch lately (a moving mean): ~1 only with one writer at a time.
        self._batch_proposals_mean = 1.0
        self._proposed_now_this_iteration = False  # see `_alone`

    # Lifecycle -------------------------------------------------------------------

    def start(self, spawn: Spawn) -> None:
        """Start the Ready loop and the ticker as tasks of the node's supervisor:
        an exception in either (a storage failure, a bug) fails the node, which
        then calls `halt`."""
        self._tasks = [
            spawn(self._ready_loop(), "raft-ready"),
            spawn(self._ticker(), "raft-tick"),
        ]

    def halt(self, reason: str) -> None:
        """Fail-stop: Raft stops at once (no tick, no step, no Ready), so other
        members elect a leader that can write; whatever waits is answered."""
        if self.failure is None:
            self.failure = reason
        self.stopped = True
        self._wakeup.set()
        for task in self._running_tasks():
            task.cancel()
        self._drop_notices()
        self._fail_waiting(reason, self._stored_through())

    async def stop(self) -> None:
        """Stop ticking and processing; fail whatever is still waiting."""
        self.stopped = True
        self._wakeup.set()
        tasks = self._running_tasks()
        for task in tasks:
            task.cancel()
        # Errors were reported to the supervisor when the tasks ended.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._drop_notices()
        if self._persisting_through:
            await self._settle_persist()
        self._fail_waiting("this node is shutting down", self._stored_through())

    async def _settle_persist(self) -> None:
        """Wait (at most `SETTLE_S`) for the writer thread to finish the Persist the
        Ready loop was cancelled in, so that its writes are answered "stored" or
        "not stored" rather than "may have been"."""
        try:
            barrier = self.storage.submit(WriteBatch())  # written after that one
            async with asyncio.timeout(SETTLE_S):
                await asyncio.wrap_future(barrier)
        except (StorageBusy, TimeoutError):
            return  # still being written
        except StorageError:
            pass  # failed or closed: the writer is done with that batch either way
        self._persisting_through = 0

    def _stored_through(self) -> int | None:
        """The last index the storage holds, or None when it cannot tell (corrupt)."""
        try:
            return self.storage.last_index()
        except StorageError:
            return None

    # Inputs ---------------------------------------------------------------------------

    def _running_tasks(self) -> list[asyncio.Task[None]]:
        eager = [self._eager] if self._eager is not None else []
        return self._tasks + eager

    def step(self, message: Message) -> None:
        """Step a member's message; if that made a Ready (an acknowledgement that
        commits, an APPEND to persist) and none is being handled, handle it in
        this call: the Ready loop would start it one loop iteration later
        (~15-40 µs on this machine, on the path of every write)."""
        if self.stopped:
            return
        self.core.step(message)
        if self._handling:
            self._wakeup.set()  # the loop notes it was skipped; it is woken again after
        elif self.core.has_ready():
            self._handle_now()
        # Else nothing to do: waking the loop would cost an iteration for nothing
        # (the second acknowledgement of a write, a heartbeat's answer).

    def _handle_now(self) -> None:
        """Run `_handle_all` in this call up to its first suspension (a storage
        write in the writer thread, say), the rest in a task. Raised before that:
        to the caller (the node fails); in the task: to the Ready loop, which
        fails the node (`_raise_in_loop`). `_handling` is reset by the coroutine's
        own `finally`, either way."""
        self._handling = True
        task = start_now(self._handle_all_then_release())
        if task is not None:
            self._eager = task
            task.add_done_callback(self._eager_done)

    async def _handle_all_then_release(self) -> None:
        try:
            await self._handle_all()
        finally:
            self._handling = False
            if self._skipped:  # the loop woke meanwhile (a tick, a proposal): again
                self._skipped = False
                self._wakeup.set()

    def _eager_done(self, task: asyncio.Task[None]) -> None:
        self._eager = None
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, Exception):
            self._raise_in_loop(error)

    def _raise_in_loop(self, error: Exception) -> None:
        """Have the Ready loop, a supervised task, raise `error` (from a callback
        or a task of its own, whose error would only be logged): the node fails."""
        self._callback_error = error
        self._wakeup.set()

    def propose(
        self, entry_type: int, build: Build, key: str = "", on_applied: OnApplied | None = None
    ) -> asyncio.Future[Entry]:
        """Queue one entry; the future gives it back once committed and applied here.
        `on_applied(entry)`, if given, is called in the same step, before the future's
        waiter resumes (two loop iterations later): the API writes the answer to a
        write from there (`api/wire.py` `WriteDelivery`)."""
        self._check_running()
        if self.core.role is not Role.LEADER:
            raise NotAvailable("this node is not the leader", retry_after_s=1)
        if len(self._queued) + len(self._proposed) >= self._pending_max:
            raise Overloaded("too many writes are waiting to commit; retry later")
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        queued = self._queued
        queued.append(_Proposal(entry_type, build, key, future, on_applied=on_applied))
        if self._alone(queued):
            self._propose_now()
        else:
            self._wakeup.set()  # batched with the others by the Ready loop
        return future

    def _alone(self, queued: list[_Proposal]) -> bool:
        """Whether the proposal just queued is a lone writer's: nothing else is
        queued, being handled or waiting to commit, the recent batches held one
        proposal each (their moving mean), and no proposal was handled at once
        earlier in this loop iteration (many writers' requests arrive in one
        iteration: the first may go at once, the others then make a batch, and the
        mean keeps every batch after it waiting for the Ready loop until about a
        dozen lone ones in a row; one lone batch among many writers' did not, and
        cost 3 members at 16 clients 0.84x the writes/s)."""
        return not (
            self._handling
            or len(queued) > 1
            or self._proposed
            or self._batch_proposals_mean > LONE_BATCH_MEAN_MAX
            or self._proposed_now_this_iteration
        )

    def _propose_now(self) -> None:
        """Handle a lone writer's proposal in this call rather than one loop
        iteration later in the Ready loop (~30 µs on the path of every such write;
        with an inline write and a lone voter the write is applied, and answered,
        before `propose` returns). An error is the Ready loop's to raise (the node
        fails), as if it had run there."""
        self._proposed_now_this_iteration = True
        self.counters.proposals_at_once += 1
        asyncio.get_running_loop().call_soon(self._end_iteration)
        try:
            self._handle_now()
        except Exception as error:
            self._raise_in_loop(error)

    def _end_iteration(self) -> None:
        self._proposed_now_this_iteration = False

    def propose_membership(self, change: ConfChange) -> asyncio.Future[Entry]:
        """Propose a membership change now; raises `MembershipChangeRejected`/`NotLeader`."""
        self._check_running()
        index = self.core.propose_membership(change)
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._proposed[index] = _Proposal(0, _no_build, "", future, index, self.core.term)
        self._wakeup.set()
        return future

    async def read_index(self, timeout_s: float) -> int:
        """A linearizable read index (§6.4), confirmed by a quorum through the leader."""
        self._check_running()
        context = self._read_epoch + next(self._read_ids).to_bytes(8, "big")
        try:
            self.core.read_index(context)
        except NotLeader:
            raise NotAvailable("no leader is known; retry later", retry_after_s=1) from None
        except ProposalDropped:
            raise Overloaded("too many linearizable reads are waiting; retry later") from None
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[context] = future
        self._wakeup.set()
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            raise NotAvailable(
                "a linearizable read could not be confirmed by a quorum in time", retry_after_s=1
            ) from None
        finally:
            self._reads.pop(context, None)

    def transfer_leadership(self, target: int) -> None:
        self.core.transfer_leadership(target)
        self._wakeup.set()

    def campaign(self) -> None:
        self.core.campaign()
        self._wakeup.set()

    def set_timeouts(self, tick_s: float, election_ticks: int, heartbeat_ticks: int) -> None:
        self.tick_s = tick_s
        self.core.set_timeouts(election_ticks, heartbeat_ticks)

    def wake(self) -> None:
        self._wakeup.set()

    def after_send(self, callback: Callable[[], None]) -> None:
        """From an `on_applied` hook: call `callback` in this same Ready, once the
        messages planned right after the apply are routed (at once when none are).
        A commit's notices are held then (`commit_notices`), so a forwarded write's
        answer can take the one its asker needs and both go in one write."""
        self._after_send.append(callback)

    def take_commit_notice(self, peer: int) -> Message | None:
        """`peer` is about to be answered a forwarded write or a read index: the
        commit index it must apply first, held for it (see `commit_notices`), for the
        caller to send now, in the same write as the answer."""
        notice = self._notices.release(peer)
        return None if self.stopped else notice

    def _check_running(self) -> None:
        if self.failure is not None:
            raise NotAvailable(f"this node stopped taking writes: {self.failure}")
        if self.stopped:
            raise NotAvailable("this node is shutting down", retry_after_s=1)

    # The loops -------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while not self.stopped:
            await asyncio.sleep(self.tick_s)
            self.core.tick()
            if self._handling:  # the Ready loop waits (for the disk): heartbeats go now
                sending = send_during_write(self.core)
                if sending is not None:
                    self._send(sending)
            self._wakeup.set()

    async def _ready_loop(self) -> None:
        while not self.stopped:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._callback_error is not None:
                raise self._callback_error
            if self._handling:
                self._skipped = True  # `_handle_now` is at it; it wakes this loop then
                continue
            self._handling = True
            try:
                await self._handle_all()
            finally:
                self._handling = False

    async def _handle_all(self) -> None:
        """Propose what is queued, handle every Ready, run a due after-advance step."""
        self._propose_queued()
        while self.core.has_ready() and not self.stopped:
            await self._handle(self.core.ready())
            self._propose_queued()
        if self._after_advance_due and not self.stopped:
            self._after_advance_due = False
            await self._hooks.after_advance()

    def request_after_advance(self) -> None:
        """Run the after-advance step once more soon, between Readys, even when no
        Ready comes (the archive of a purge finished: its compaction can go on)."""
        self._after_advance_due = True
        self._wakeup.set()

    def _propose_queued(self) -> None:
        if not self._queued:
            return
        batch, self._queued = self._queued, []
        self._batch_proposals_mean += (len(batch) - self._batch_proposals_mean) / BATCH_MEAN_WEIGHT
        if self.core.role is not Role.LEADER:
            self._fail_proposals(batch, NotAvailable("leadership changed; retry", retry_after_s=1))
            return
        first = self.core.last_index + 1
        term = self.core.term
        # One entry too large for a message is refused alone (413), never with
        # the others: the core drops a whole proposal batch that holds one.
        entry_bytes_max = self.core.config.max_message_bytes
        fitting: list[tuple[_Proposal, bytes]] = []
        for proposal in batch:
            data = proposal.build(first + len(fitting))
            if len(data) > entry_bytes_max:
                self._fail_proposals([proposal], _too_large(len(data), entry_bytes_max))
            else:
                fitting.append((proposal, data))
        try:
            indices = self.core.propose(
                [(proposal.entry_type, data, proposal.key) for proposal, data in fitting]
            )
        except ProposalDropped as error:
            self._fail_proposals(batch, Overloaded(f"the write was refused: {error}"))
            return
        except NotLeader:
            self._fail_proposals(batch, NotAvailable("leadership changed; retry", retry_after_s=1))
            return
        for index, (proposal, _) in zip(indices, fitting, strict=True):
            proposal.index, proposal.term = index, term
            self._proposed[index] = proposal

    async def _handle(self, ready: Ready) -> None:
        """Execute the plan for `ready` (see `ready_plan`), then `advance`."""
        await self._execute_plan(self._planner.plan(ready, self.storage.last_index()))
        for read_state in ready.read_states:
            future = self._reads.get(read_state.context)
            if future is not None and not future.done():
                future.set_result(read_state.index)
        if ready.soft_state is not None:
            if ready.soft_state.role is not Role.LEADER:
                self._drop_notices()
            self._hooks.on_role_change(ready.soft_state.role, ready.soft_state.leader_id)
        self.core.advance(ready)
        await self._hooks.after_advance()

    async def _execute_plan(self, steps: list[Step]) -> None:
        try:
            sent_early: Step | None = None  # the Send after a Persist, sent from inside it
            for position, step in enumerate(steps):
                if isinstance(step, Persist):
                    following = steps[position + 1] if position + 1 < len(steps) else None
                    then = following if isinstance(following, Send) else None
                    if await self._persist(step, then):
                        sent_early = then
                elif step is not sent_early:
                    await self._execute(step)
                if self._after_send and not _send_follows(steps, position):
                    self._run_after_send()
        finally:
            self._run_after_send()  # none are left behind, not even by a failed step

    async def _execute(self, step: Step) -> None:
        """Any one step; `_execute_plan` runs a Persist through `_persist` itself, to
        hand it the Send that follows."""
        if isinstance(step, Persist):
            await self._persist(step, None)
        elif isinstance(step, Send):
            self._send(step)
        elif isinstance(step, NoteCommit):
            self.storage.note_commit(step.index)
        elif isinstance(step, Apply):
            await self._hooks.apply(step.entries)
            self._resolve(step.entries)
        else:  # InstallSnapshot
            await self._hooks.install_snapshot(step.snapshot)

    def _send(self, step: Send) -> None:
        send = self._hooks.send
        for message in self._notices.route(step.messages):
            send(message)
        # Raft's messages never wait for the rest of the iteration: this Ready's
        # APPENDs for the leader's inline fsync, a follower's acknowledgement for
        # its apply (each may be its link's second write in this iteration).
        self._hooks.send_held()
        self._time_notices()

    async def _persist(self, step: Persist, then: Send | None) -> bool:
        """Write `step`; `then`, the messages that wait for it (a follower's
        acknowledgement), go the moment the storage's inline COMMIT returns,
        before it publishes the rows (~35 µs sooner on the path of every write);
        whether they went (if not, the caller sends them: the write went to the
        writer thread). Sending does not raise into the storage: an error there is
        raised here once the write has finished, and fails the node."""
        snapshot = step.snapshot
        meta = self._hooks.snapshot_meta(snapshot) if snapshot is not None else {}
        batch = WriteBatch(
            hard_state=step.hard_state, entries=step.entries, snapshot=snapshot, meta=meta
        )
        early = _SendWhenDurable(self, then) if then is not None else None
        self._persisting_through = step.entries[-1].index if step.entries else 0
        try:
            sent = await self.storage.write(batch, now_if_idle=True, on_durable=early)
        except Exception as error:
            # Refused or rolled back: not stored; unless its COMMIT itself failed,
            # when it may be on disk (`StorageFailed.maybe_written`).
            if not (isinstance(error, StorageFailed) and error.maybe_written):
                self._persisting_through = 0
            raise
        # (Cancelled, the batch is still the writer thread's: the mark stays.)
        self._persisting_through = 0
        self._planner.persisted(step)
        if early is not None and early.error is not None:
            raise early.error
        return sent

    def _run_after_send(self) -> None:
        callbacks, self._after_send = self._after_send, []
        if not callbacks:
            return
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the request is still answered, the usual way
                log.exception("an after-send callback failed; the request answers normally")
        self._hooks.send_held()  # the answers, written together, go now

    def _time_notices(self) -> None:
        change = self._notices.timer_change()
        if change is Timer.START:
            loop = asyncio.get_running_loop()
            self._notices_due = loop.call_later(HOLD_S, self._release_notices)
        elif change is Timer.STOP:
            self._cancel_notices_timer()

    def _release_notices(self) -> None:
        """The timer's callback: an error here is raised again in the Ready loop,
        whose task is supervised (a callback's error would only be logged)."""
        self._notices_due = None
        if self.stopped:
            return
        send = self._hooks.send
        try:
            for notice in self._notices.release_all():
                send(notice)
            self._hooks.send_held()
        except Exception as error:
            self._raise_in_loop(error)

    def _drop_notices(self) -> None:
        self._notices.clear()
        self._cancel_notices_timer()

    def _cancel_notices_timer(self) -> None:
        if self._notices_due is not None:
            self._notices_due.cancel()
            self._notices_due = None

    def _resolve(self, entries: tuple[Entry, ...]) -> None:
        proposed = self._proposed
        if not proposed:
            return
        committed = 0
        for entry in entries:
            proposal = proposed.pop(entry.index, None)
            if proposal is None or proposal.future.done():
                continue
            if proposal.term == entry.term:
                if proposal.on_applied is not None:
                    _call_on_applied(proposal.on_applied, entry)
                proposal.future.set_result(entry)
                committed += 1
            else:
                self.counters.proposals_failed += 1
                proposal.future.set_exception(
                    NotAvailable("leadership changed before the write committed; retry")
                )
                proposal.future.exception()  # the waiter may have timed out
        self.counters.proposals_committed += committed

    def _fail_lone_voters(
        self, proposed: list[_Proposal], reason: str, stored_through: int | None
    ) -> None:
        """A lone voter's proposals: nobody else holds them, so each was stored
        (then it is committed: it is applied when the node starts again; stopping
        came between its write and its apply), may have been (its batch was still
        being written when the node stopped waiting, or its COMMIT failed), or was
        not."""
        if stored_through is None:
            # (Not the core's last index: the core reads it from the storage.)
            known_through = 0
            unknown_through = max((proposal.index for proposal in proposed), default=0)
        else:
            known_through, unknown_through = stored_through, self._persisting_through
        for proposal in proposed:
            if proposal.index <= known_through:
                stored = NotAvailable(
                    f"{reason}: the write was stored as change {proposal.index} and is "
                    "served once this node runs again; do not send it again (with the "
                    "same Idempotency-Key, a retry gets its answer)",
                    retry_after_s=1,
                )
                _reject([proposal], stored)  # committed: not a failed proposal
                continue
            if proposal.index <= unknown_through:
                error = NotAvailable(
                    f"{reason}: the write may have been stored; retry with the same "
                    "Idempotency-Key to get it exactly once",
                    retry_after_s=1,
                )
            else:
                error = NotAvailable(f"the write was not stored: {reason}")
            self._fail_proposals([proposal], error)

    def _fail_proposals(self, batch: list[_Proposal], error: Exception) -> None:
        self.counters.proposals_failed += _reject(batch, error)

    def _fail_waiting(self, reason: str, stored_through: int | None) -> None:
        """Answer every proposal and read still waiting. `stored_through`: the
        last index the storage holds (None: it cannot tell); a Persist still in
        its writer thread (`_persisting_through`) may be stored beyond it."""
        queued, proposed = self._queued, list(self._proposed.values())
        self._queued, self._proposed = [], {}
        not_stored = NotAvailable(f"the write was not stored: {reason}")
        self._fail_proposals(queued, not_stored)
        if not self.core.membership.voters - {self.core.id}:
            self._fail_lone_voters(proposed, reason, stored_through)
            return
        # Proposed entries went to the followers with the leader's first APPEND:
        # a new leader may still commit them.
        self._fail_proposals(
            proposed,
            NotAvailable(
                f"{reason}; the write may have been committed by another member: retry "
                "with the same Idempotency-Key to get it exactly once",
                retry_after_s=1,
            ),
        )
        for future in self._reads.values():
            if not future.done():
                future.set_exception(NotAvailable(f"the read was not served: {reason}"))
                future.exception()


def _send_follows(steps: list[Step], position: int) -> bool:
    return position + 1 < len(steps) and isinstance(steps[position + 1], Send)


def _call_on_applied(on_applied: OnApplied, entry: Entry) -> None:
    try:
        on_applied(entry)
    except Exception:  # the writer is still answered, the usual way
        log.exception("a write's on_applied hook failed; the request answers normally")


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the change takes {size} bytes once stored; the limit is {limit} bytes")


def _no_build(index: int) -> bytes:
    raise AssertionError("membership entries are built by the core")


def _reject(batch: list[_Proposal], error: Exception) -> int:
    """Fail every proposal of `batch` still waiting; how many there were."""
    rejected = 0
    for proposal in batch:
        if not proposal.future.done():
            proposal.future.set_exception(error)
            proposal.future.exception()  # mark retrieved: a timed-out caller may be gone
            rejected += 1
    return rejected


class _SendWhenDurable:
    """`Storage.write`'s `on_durable` for a Persist's following Send: sends it, and
    keeps an error for the driver to raise (the storage must not see it: its COMMIT
    succeeded, and the rows must still be published)."""

    __slots__ = ("_driver", "_step", "error")

    def __init__(self, driver: RaftDriver, step: Send) -> None:
        self._driver = driver
        self._step = step
        self.error: Exception | None = None

    def __call__(self) -> None:
        try:
            self._driver._send(self._step)
        except Exception as error:
            self.error = error


__all__ = ["DriverHooks", "MembershipChangeRejected", "RaftDriver"]
