"""How records are checksummed and encoded on disk.

An entry's checksum covers everything that identifies it: its index, term,
type, idempotency key and body, so a row moved, retyped or edited is caught.
Metadata values carry a checksum prefix of their own.
"""

from __future__ import annotations

import struct
import sys
import zlib
from dataclasses import dataclass

import orjson

from changeagent.raft.entry import HardState
from changeagent.raft.interfaces import Membership, Snapshot

_HEADER = struct.Struct("<qqqI")  # index, term, type, key length
_META_CRC = struct.Struct("<I")


def entry_crc(index: int, term: int, entry_type: int, key: str, body: bytes) -> int:
    """zlib.crc32 over (index, term, type, key, body), unambiguously framed."""
    key_bytes = key.encode()
    header = _HEADER.pack(index, term, entry_type, len(key_bytes))
    return zlib.crc32(body, zlib.crc32(key_bytes, zlib.crc32(header)))


@dataclass(frozen=True, slots=True)
class ChangeFields:
    """What the writer derives from a user change's JSON: its timestamp and tags."""

    ts: int
    tags: tuple[str, ...]


_NO_FIELDS = ChangeFields(ts=0, tags=())


def derive_fields(body: bytes) -> ChangeFields:
    """Read `_ts` and `tags` out of a change's wire bytes.

    A body that is not a JSON object (never produced by a correct leader) is
    still stored, since the Raft log must hold exactly what was replicated; it
    simply has no timestamp and no tags.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NO_FIELDS
    if not isinstance(document, dict):
        return _NO_FIELDS
    ts = document.get("_ts", 0)
    if not isinstance(ts, int) or isinstance(ts, bool):
        ts = 0
    raw_tags = document.get("tags", ())
    if not isinstance(raw_tags, list) or not raw_tags:
        return ChangeFields(ts=ts, tags=())
    tags = tuple(dict.fromkeys(sys.intern(tag) for tag in raw_tags if isinstance(tag, str)))
    return ChangeFields(ts=ts, tags=_shared_tags(tags))


_TAG_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {}
_TAG_TUPLES_MAX = 4096


def _shared_tags(tags: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple object per distinct tag list, so the tail holds each only once."""
    shared = _TAG_TUPLES.get(tags)
    if shared is None:
        if len(_TAG_TUPLES) >= _TAG_TUPLES_MAX:
            _TAG_TUPLES.clear()
        _TAG_TUPLES[tags] = shared = tags
    return shared


def seal_meta(key: str, value: bytes) -> bytes:
    """A metadata value as stored: a crc32 of (key, value), then the value."""
    return _META_CRC.pack(zlib.crc32(value, zlib.crc32(key.encode()))) + value


def open_meta(key: str, stored: bytes) -> bytes | None:
    """The value of a sealed metadata record, or None when its checksum fails."""
    if len(stored) < _META_CRC.size:
        return None
    (crc,) = _META_CRC.unpack_from(stored)
    value = bytes(stored[_META_CRC.size :])
    if zlib.crc32(value, zlib.crc32(key.encode())) != crc:
        return None
    return value


def encode_hard_state(hard_state: HardState) -> bytes:
    return orjson.dumps([hard_state.term, hard_state.vote, hard_state.commit])


def decode_hard_state(data: bytes) -> HardState:
    term, vote, commit = orjson.loads(data)
    return HardState(term=int(term), vote=int(vote), commit=int(commit))


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The snapshot record: index, term, membership (sorted ids) and opaque data."""
    head = orjson.dumps(
        [
            snapshot.index,
            snapshot.term,
            sorted(snapshot.membership.voters),
            sorted(snapshot.membership.learners),
        ]
    )
    return struct.pack("<I", len(head)) + head + snapshot.data


def decode_snapshot(data: bytes) -> Snapshot:
    (head_length,) = struct.unpack_from("<I", data)
    index, term, voters, learners = orjson.loads(data[4 : 4 + head_length])
    membership = Membership(voters=frozenset(voters), learners=frozenset(learners))
    return Snapshot(
        index=int(index), term=int(term), membership=membership, data=bytes(data[4 + head_length :])
    )
