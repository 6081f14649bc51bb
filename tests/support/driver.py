"""A `RaftDriver`'s hooks for tests that only watch what it sends."""

from __future__ import annotations

from typing import Any

from changeagent.node.driver import DriverHooks
from changeagent.raft import Message


def recording_hooks(sent: list[Message]) -> DriverHooks:
    """Hooks that append every message sent to `sent` and do nothing else."""

    async def nothing(*_: Any) -> None:
        return None

    return DriverHooks(
        send=sent.append,
        apply=nothing,
        install_snapshot=nothing,
        on_role_change=lambda role, leader: None,
        snapshot_meta=lambda snapshot: {},
        after_advance=nothing,
    )
