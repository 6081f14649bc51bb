"""Quorum arithmetic, in one place: a majority of the voters (N/2+1).

Every rule that counts voters (commit, elections, check-quorum, ReadIndex)
asks here, so the definition cannot drift between them.
"""

from __future__ import annotations

from collections.abc import Iterable


def quorum_size(voter_count: int) -> int:
    """How many voters make a majority of `voter_count` (0 voters: 1, never reached)."""
    return voter_count // 2 + 1


def has_quorum(count: int, voter_count: int) -> bool:
    """Whether `count` voters are a majority of `voter_count`."""
    return voter_count > 0 and count >= quorum_size(voter_count)


def quorum_index(match_indices: Iterable[int]) -> int:
    """The highest index held by a majority, given each voter's match index
    (the commit candidate of §5.3); 0 without voters."""
    ordered = sorted(match_indices, reverse=True)
    if not ordered:
        return 0
    return ordered[quorum_size(len(ordered)) - 1]
