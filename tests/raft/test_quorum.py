"""Quorum arithmetic, as tables: the one definition every rule uses."""

from __future__ import annotations

import pytest

from changeagent.raft.quorum import has_quorum, quorum_index, quorum_size


@pytest.mark.parametrize(
    ("voters", "size"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)]
)
def test_quorum_size_is_a_strict_majority(voters: int, size: int) -> None:
    assert quorum_size(voters) == size
    assert 2 * size > voters and 2 * (size - 1) <= voters


@pytest.mark.parametrize(
    ("count", "voters", "expected"),
    [(0, 0, False), (1, 1, True), (1, 2, False), (2, 3, True), (2, 4, False), (3, 5, True)],
)
def test_has_quorum(count: int, voters: int, expected: bool) -> None:
    assert has_quorum(count, voters) is expected


@pytest.mark.parametrize(
    ("matches", "index"),
    [
        ([], 0),
        ([7], 7),
        ([7, 3], 3),  # two voters: both must hold it
        ([9, 2, 5], 5),
        ([9, 2, 5, 8], 5),  # four voters: three must hold it
        ([1, 1, 9, 9, 9], 9),
        ([1, 2, 3, 4, 5], 3),
    ],
)
def test_quorum_index_is_held_by_a_majority(matches: list[int], index: int) -> None:
    assert quorum_index(matches) == index
    if matches:
        holders = sum(1 for match in matches if match >= index)
        assert has_quorum(holders, len(matches))
