"""Encoding of the node's internal log entries and of its snapshot data.

Internal entry types (negative; never listed by GET /changes):
- CONFIG (-3): replicated /config settings, as the YAML users see.
- PURGE (-4): discard the log prefix up to an index (8 bytes, big-endian).
- ADDRESS (-5): a member's address, JSON `{"id": n, "address": "host:port"}`.
  The founding member announces its own address this way; later members'
  addresses travel in their ADD_LEARNER membership entry (`ConfChange.context`).

Snapshot data (what a compaction point remembers of the node's replicated
state, and what the leader sends with a snapshot): JSON `{"settings": yaml,
"addresses": {"id": "host:port"}}`.
"""

from __future__ import annotations

import struct

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


def encode_snapshot_data(settings: Settings, addresses: dict[int, str]) -> bytes:
    return orjson.dumps(
        {
            "settings": settings_to_yaml(settings),
            "addresses": {str(node_id): address for node_id, address in addresses.items()},
        }
    )


def decode_snapshot_data(data: bytes) -> tuple[Settings | None, dict[int, str]]:
    """Settings (None when the snapshot has none: nothing compacted yet) and addresses."""
    if not data:
        return None, {}
    document = orjson.loads(data)
    addresses = {int(key): str(value) for key, value in document.get("addresses", {}).items()}
    return settings_from_yaml(document["settings"]), addresses
