"""Encoding of the internal CONFIG and PURGE entries that the log replicates."""

from __future__ import annotations

import struct

from changeagent.config import Settings, settings_from_yaml, settings_to_yaml

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
