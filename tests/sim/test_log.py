"""The simulated disk: LogReader semantics, truncation, snapshots, and crash loss."""

from __future__ import annotations

import pytest

from changeagent.raft.entry import Entry, HardState
from changeagent.raft.interfaces import Compacted, Membership, Snapshot, Unavailable
from changeagent.sim.log import LogCorruption, SimLog


def entries(first: int, terms: list[int]) -> list[Entry]:
    return [
        Entry(first + k, term, 0, f"e{first + k}t{term}".encode()) for k, term in enumerate(terms)
    ]


def synced(terms: list[int]) -> SimLog:
    log = SimLog(Snapshot(membership=Membership(voters=frozenset({1}))))
    log.stage(HardState(term=max(terms), vote=1, commit=0), None, entries(1, terms))
    log.sync()
    return log


def test_empty_log_bounds() -> None:
    log = SimLog()
    assert (log.first_index(), log.last_index(), log.term(0)) == (1, 0, 0)
    with pytest.raises(Unavailable):
        log.term(1)
    assert log.entries(1, 1, 100) == []


def test_staged_writes_are_invisible_until_synced_and_lost_on_crash() -> None:
    log = SimLog()
    log.stage(HardState(1, 1, 0), None, entries(1, [1, 1]))
    assert log.last_index() == 0
    assert log.view_last_index() == 2
    assert log.view_term(2) == 1
    log.crash()
    assert log.view_last_index() == 0
    assert log.durable_hard_state() == HardState(0, 0, 0)


def test_sync_makes_the_write_durable() -> None:
    log = synced([1, 1, 2])
    assert log.last_index() == 3
    assert log.term(3) == 2
    assert log.durable_hard_state() == HardState(2, 1, 0)


def test_append_truncates_the_conflicting_suffix() -> None:
    log = synced([1, 1, 2, 2])
    log.stage(None, None, entries(3, [3]))
    assert log.view_term(3) == 3
    assert log.view_entry(4) is None
    log.sync()
    assert log.last_index() == 3
    assert [e.term for e in log.durable_entries()] == [1, 1, 3]


def test_append_with_a_gap_is_refused() -> None:
    log = synced([1])
    log.stage(None, None, entries(3, [1]))
    with pytest.raises(LogCorruption):
        log.sync()


def test_second_stage_before_sync_is_refused() -> None:
    log = SimLog()
    log.stage(None, None, entries(1, [1]))
    with pytest.raises(LogCorruption):
        log.stage(None, None, entries(2, [1]))


def test_entries_respects_max_bytes_but_returns_at_least_one() -> None:
    log = synced([1, 1, 1, 1])
    assert len(log.entries(1, 5, 0)) == 1
    assert len(log.entries(1, 5, 10)) == 2  # each entry's data is 5 bytes
    assert len(log.entries(1, 5, 1000)) == 4
    with pytest.raises(Unavailable):
        log.entries(1, 6, 1000)


def test_compaction_discards_the_prefix() -> None:
    log = synced([1, 1, 2, 2])
    log.compact(Snapshot(index=2, term=1))
    assert (log.first_index(), log.last_index()) == (3, 4)
    assert log.term(2) == 1
    with pytest.raises(Compacted):
        log.term(1)
    with pytest.raises(Compacted):
        log.entries(2, 4, 100)
    assert log.view_entry(2) is None and log.view_term(2) == 1


def test_compaction_with_a_wrong_term_is_refused() -> None:
    log = synced([1, 2])
    with pytest.raises(LogCorruption):
        log.compact(Snapshot(index=2, term=1))


def test_installing_a_matching_snapshot_keeps_the_suffix() -> None:
    log = synced([1, 1, 2, 2])
    log.stage(None, Snapshot(index=3, term=2), [])
    assert log.view_snapshot().index == 3
    assert log.view_term(4) == 2
    log.sync()
    assert (log.first_index(), log.last_index()) == (4, 4)


def test_installing_a_conflicting_snapshot_discards_the_log() -> None:
    log = synced([1, 1, 2, 2])
    log.stage(None, Snapshot(index=3, term=3), entries(4, [3]))
    assert log.view_entry(4) == entries(4, [3])[0]
    log.sync()
    assert (log.first_index(), log.last_index(), log.term(3)) == (4, 4, 3)
    assert log.term(4) == 3


def test_a_noted_commit_index_survives_a_crash_and_raises_the_restart_commit() -> None:
    log = synced([1, 1, 1])
    log.note_commit(2)
    log.crash()
    assert log.durable_hard_state().commit == 0
    assert log.restart_hard_state() == HardState(term=1, vote=1, commit=2)


def test_a_noted_commit_index_never_lowers_the_durable_one_nor_passes_the_log() -> None:
    log = synced([1, 1])
    log.note_commit(9)
    assert log.restart_hard_state().commit == 2  # storage caps it at the last index
    log.stage(HardState(term=1, vote=1, commit=2), None, [])
    log.sync()
    log.note_commit(1)
    assert log.restart_hard_state().commit == 2
