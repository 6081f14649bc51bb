"""Encoding of the node's internal log entries and of its snapshot data.

Internal entry types (negative; never listed by GET /changes):
- CONFIG (-3): replicated /config settings, as the YAML users see.
- PURGE (-4): discard the log prefix up to an index (8 bytes, big-endian).
- ADDRESS (-5): a member's address, JSON `{"id": n, "address": "host:port"}`.
  The founding member announces its own address this way; later members'
  addresses travel in their ADD_LEARNER membership entry (`ConfChange.context`).

ADD_LEARNER context: the member's address as UTF-8 text (a member to promote
once it has caught up), or JSON `{"address": "host:port", "role": "learner"}`
for a read-only member that stays a learner. An address never starts with
"{", so the two forms cannot be confused, and entries written before roles
existed read as they always did.

Snapshot data (what a compaction point remembers of the node's replicated
state, and what the leader sends with a snapshot): JSON `{"settings": yaml,
"addresses": {"id": "host:port"}, "keptLearners": [id, ...]}` (no
"keptLearners" before roles existed: no learner is kept).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from changeagent.config import Settings, settings_from_yaml, settings_to_yaml

ENTRY_TYPE_ADDRESS = -5

_PURGE = struct.Struct(">Q")


def encode_settings(settings: Settings) -> bytes:
    # YAML is the /config form users see; storing it keeps one schema for both.
    return settings_to_yaml(settings).encode()


def decode_settings(data: bytes) -> Settings:
    return settings_from_yaml(data)


def encode_purge(index: int) -> bytes:
    return _PURGE.pack(index)


def decode_purge(data: bytes) -> int:
    (index,) = _PURGE.unpack(data)
    return int(index)


def encode_address(node_id: int, address: str) -> bytes:
    return orjson.dumps({"id": node_id, "address": address})


def decode_address(data: bytes) -> tuple[int, str]:
    document = orjson.loads(data)
    return int(document["id"]), str(document["address"])


def encode_member_context(address: str, *, keep_learner: bool) -> bytes:
    """The ADD_LEARNER context for a member at `address` (see the module docstring)."""
    if keep_learner:
        return orjson.dumps({"address": address, "role": "learner"})
    return address.encode()


def decode_member_context(context: bytes) -> tuple[str | None, bool]:
    """(address, whether the member stays a learner) from an ADD_LEARNER context;
    the address is None when the context has none (the simulator's members)."""
    if not context.startswith(b"{"):
        return (context.decode() or None), False
    document = orjson.loads(context)
    address = document.get("address")
    return (str(address) if address else None), document.get("role") == "learner"


@dataclass(frozen=True, slots=True)
class SnapshotData:
    """What a compaction point records of the replicated state."""

    settings: Settings | None  # None when the snapshot has none: nothing compacted yet
    addresses: dict[int, str]
    kept_learners: frozenset[int]


def encode_snapshot_data(
    settings: Settings, addresses: dict[int, str], kept_learners: Iterable[int] = ()
) -> bytes:
    return orjson.dumps(
        {
            "settings": settings_to_yaml(settings),
            "addresses": {str(node_id): address for node_id, address in addresses.items()},
            "keptLearners": sorted(kept_learners),
        }
    )


def decode_snapshot_data(data: bytes) -> SnapshotData:
    if not data:
        return SnapshotData(None, {}, frozenset())
    document = orjson.loads(data)
    addresses = {int(key): str(value) for key, value in document.get("addresses", {}).items()}
    kept = frozenset(int(node_id) for node_id in document.get("keptLearners", ()))
    return SnapshotData(settings_from_yaml(document["settings"]), addresses, kept)
