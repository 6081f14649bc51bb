"""The Ready planner: what a node does with one Ready, in which order, as data.

`ReadyPlanner.plan(ready, durable_last_index)` turns a Ready into an ordered
list of steps; it does no I/O, so the asyncio driver (`driver.py`) and the
simulator (`changeagent.sim`) execute the very same plan, one against SQLite and
sockets, the other against simulated storage, network and time.

The order, and why:

- A Ready that writes (entries, a snapshot, a new term or vote):
  1. `Send(messages)`: the leader replicates while it writes its own disk
     (Raft dissertation §10.2.1); pre-vote traffic needs nothing durable.
  2. `Apply(durable prefix)`: under load a Ready carries the previous batch, now
     committed and already durable, with the next batch to append: answer the
     first before the fsync of the second. Only entries on disk and not
     rewritten by this Ready's append qualify. Not when the Ready holds
     messages that wait for the write (a follower's acknowledgement): those
     are on the leader's path to its next commit, and this node's readers are
     not, so everything is applied after they are sent (step 5).
  3. `Persist(hard state, entries, snapshot)`: one transaction, one fsync. The
     hard state goes with it when its term or vote changed, or when its commit
     index is `COMMIT_STORED_LAG_MAX` or more ahead of the stored one (see below).
  4. `Send(messages_after_persist)`: votes and acknowledgements promise what is
     durable, so they go only now (the driver sends them from inside an inline
     write, the moment its COMMIT returns: `RaftDriver._persist`).
  5. `InstallSnapshot`, then `Apply(the rest)`.
- A Ready with nothing to write (on a leader: the commit of a write):
  `NoteCommit`, `Apply`, then `Send`: the waiting client is answered before the
  new commit index goes out to the followers (delaying a message is always
  safe; a second fsync per write for the commit index alone is not needed: the
  commit index is volatile in Raft, §5.3, and noted without fsync, etcd's rule,
  so that a restarted process never shows fewer changes than it served).
  The executor routes every `Send` through `CommitNotices`
  (`commit_notices.py`), which holds those commit-only APPENDs briefly for the
  next APPEND to carry instead.

Every `Apply` is preceded by a `NoteCommit` of its last index: what is served
from then on must be served again after a restart. So a commit index in the
database is only a floor for after a power loss (which may lose the noted one);
writing it with every write was one more upsert and two more pages per write on
each member (1 client through 3 members: 1.04x writes/s without it, measured
beside the tree before). It goes to the database at most every `COMMIT_STORED_LAG_MAX`
entries: after a power loss a node alone shows at most that many fewer changes
than it served, until it hears the commit from a leader again (a standalone node
at once: it commits its whole log with the first entry of its new term).

After `advance`, `plan_compaction` decides whether a purge applied in this
Ready can compact now (the core only compacts what it counts as applied).
"""

from __future__ import annotations

from dataclasses import dataclass

from changeagent.raft import Entry, HardState, Message, RaftNode, Ready, Snapshot

COMMIT_STORED_LAG_MAX = 1024  # entries the stored commit index may trail the noted one


@dataclass(frozen=True, slots=True)
class Send:
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class NoteCommit:
    """Note the commit index without fsync (survives a process crash)."""

    index: int


@dataclass(frozen=True, slots=True)
class Persist:
    """One durable write: entries, snapshot and hard state, one fsync."""

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class Apply:
    """Committed entries, in order, durable here: apply them and answer their writers."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Compact:
    """Discard the log up to `snapshot.index`, recording `snapshot` (one write)."""

    snapshot: Snapshot


Step = Send | NoteCommit | Persist | InstallSnapshot | Apply


class ReadyPlanner:
    """Plans Readies; remembers which hard state is durable and which is only noted.

    Invariant: `unsynced_hard_state`, when set, is newer than `durable_hard_state`
    and differs from it at most in its commit index.
    """

    def __init__(self, durable_hard_state: HardState) -> None:
        self.durable_hard_state = durable_hard_state
        self.unsynced_hard_state: HardState | None = None

    def plan(self, ready: Ready, durable_last_index: int) -> list[Step]:
        """The steps for `ready`; `durable_last_index` is the storage's last index."""
        if self.must_write(ready):
            return self._plan_write(ready, durable_last_index)
        return self._plan_commit(ready)

    def persisted(self, step: Persist) -> None:
        """The executor finished `step`: its hard state is durable now."""
        if step.hard_state is not None:
            self.durable_hard_state = step.hard_state
            self.unsynced_hard_state = None

    def must_write(self, ready: Ready) -> bool:
        """Entries, a snapshot, or a new term or vote need a durable write; a hard
        state whose only change is the commit index does not."""
        if ready.entries or ready.snapshot is not None:
            return True
        hard_state = ready.hard_state
        durable = self.durable_hard_state
        return hard_state is not None and (
            (hard_state.term, hard_state.vote) != (durable.term, durable.vote)
        )

    def _plan_write(self, ready: Ready, durable_last_index: int) -> list[Step]:
        steps: list[Step] = []
        if ready.messages:
            steps.append(Send(ready.messages))
        committed = ready.committed_entries
        if ready.entries and ready.snapshot is None and not ready.messages_after_persist:
            durable = _durable_prefix(committed, durable_last_index, ready.entries[0].index)
            if durable:
                steps += _apply(durable)
                committed = committed[len(durable) :]
        if ready.hard_state is not None:
            self.unsynced_hard_state = ready.hard_state
        steps.append(Persist(self._hard_state_to_write(), ready.entries, ready.snapshot))
        if ready.messages_after_persist:
            steps.append(Send(ready.messages_after_persist))
        if ready.snapshot is not None:
            steps.append(InstallSnapshot(ready.snapshot))
        if committed:
            steps += _apply(committed)
        return steps

    def _hard_state_to_write(self) -> HardState | None:
        """The hard state a write carries: a new term or vote always (durable
        before any message promises it), a commit index alone only when the
        stored one trails it by `COMMIT_STORED_LAG_MAX` (see the module doc)."""
        unsynced = self.unsynced_hard_state
        if unsynced is None:
            return None
        durable = self.durable_hard_state
        if (unsynced.term, unsynced.vote) != (durable.term, durable.vote):
            return unsynced
        if unsynced.commit - durable.commit >= COMMIT_STORED_LAG_MAX:
            return unsynced
        return None

    def _plan_commit(self, ready: Ready) -> list[Step]:
        steps: list[Step] = []
        committed = ready.committed_entries
        if ready.hard_state is not None:
            self.unsynced_hard_state = ready.hard_state
            if not committed or ready.hard_state.commit > committed[-1].index:
                steps.append(NoteCommit(ready.hard_state.commit))
        if committed:
            steps += _apply(committed)
        messages = ready.messages + ready.messages_after_persist
        if messages:
            steps.append(Send(messages))
        return steps


def send_during_write(core: RaftNode) -> Send | None:
    """On a tick while the Ready loop waits for a write (a Ready's, or the
    compaction after one): what may leave now (`RaftNode.take_messages`), so that a
    slow write (a large entry, a purge of many changes, a slow disk) holds up no
    heartbeat. The driver and the simulator call it alike."""
    messages = core.take_messages()
    return Send(messages) if messages else None


def plan_compaction(core: RaftNode, index: int, data: bytes) -> Compact | None:
    """After `advance`: compact to a purge point applied in that Ready, unless a
    snapshot at or beyond it is installed or pending (it supersedes the purge)."""
    snapshot = core.compact(index, data)
    return Compact(snapshot) if snapshot is not None else None


def _apply(entries: tuple[Entry, ...]) -> list[Step]:
    return [NoteCommit(entries[-1].index), Apply(entries)]


def _durable_prefix(
    committed: tuple[Entry, ...], durable_last_index: int, first_appended: int
) -> tuple[Entry, ...]:
    """The committed entries already on disk here and not rewritten by this
    Ready's append (a follower's commit index may cover entries that arrive in
    the same Ready, possibly replacing a stale suffix on disk)."""
    last_durable = min(durable_last_index, first_appended - 1)
    count = 0
    for entry in committed:
        if entry.index > last_durable:
            break
        count += 1
    return committed[:count]
