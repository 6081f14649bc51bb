"""Deliberately planted bugs, to show that the checkers can fail.

None of them edits the core's files. Each builds `SimOptions` that either swap
in a subclass of `RaftNode` overriding one small handler, or make the simulator
itself break the Ready contract (sending `messages_after_persist` before the
fsync completes: a follower acknowledging entries it has not persisted).
"""

from __future__ import annotations

from collections.abc import Callable

from changeagent.sim.cluster import SimOptions


def _ack_before_persist() -> SimOptions:
    return SimOptions(ack_before_persist=True)


PLANTED_BUGS: dict[str, Callable[[], SimOptions]] = {
    "ack-before-persist": _ack_before_persist,
}


def options_for_bug(bug: str | None) -> SimOptions:
    """Default options, or the options that plant `bug`."""
    if bug is None:
        return SimOptions()
    return PLANTED_BUGS[bug]()
