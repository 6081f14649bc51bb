"""How records are checksummed and encoded on disk.

An entry's checksum covers everything that identifies it: its index, term,
type, idempotency key and body, so a row moved, retyped or edited is caught.
Metadata values carry a checksum prefix of their own.
"""

from __future__ import annotations

import struct
import sys
import zlib
from typing import NamedTuple

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


class ChangeFields(NamedTuple):
    """What the writer derives from a user change's JSON: its timestamp and tags.
    A named tuple: made once per stored change (catch-up makes ~100,000 a second),
    and a tuple is made several times faster than a frozen dataclass."""

    ts: int
    tags: tuple[str, ...]


_NO_FIELDS = ChangeFields(0, ())


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
    if type(document) is not dict:
        return _NO_FIELDS
    ts = document.get("_ts", 0)
    if type(ts) is not int:  # not a bool, not a float
        ts = 0
    raw_tags = document.get("tags")
    if type(raw_tags) is not list or not raw_tags:
        return ChangeFields(ts, ())
    try:
        tags = _TAG_TUPLES[tuple(raw_tags)]  # the common case: a tag list seen before
    except (KeyError, TypeError):  # new, or unhashable items (not strings)
        tags = _shared_tags(raw_tags)
    return ChangeFields(ts, tags)


# One tuple object per distinct tag list (the tail then holds each only once),
# found by the list's items as stored (so the lookup needs no cleaning).
_TAG_TUPLES: dict[tuple[object, ...], tuple[str, ...]] = {}
_TAG_TUPLES_MAX = 4096


def _shared_tags(raw_tags: list[object]) -> tuple[str, ...]:
    """The cleaned tags of a list (strings only, interned, each once, in order),
    remembered under the raw items when they are hashable."""
    tags = tuple(dict.fromkeys(sys.intern(tag) for tag in raw_tags if isinstance(tag, str)))
    shared = _TAG_TUPLES.get(tags, tags)
    try:
        key = tuple(raw_tags)
        hash(key)
    except TypeError:  # a list or an object among the tags: not remembered
        return shared
    if len(_TAG_TUPLES) >= _TAG_TUPLES_MAX:
        _TAG_TUPLES.clear()
    _TAG_TUPLES[key] = shared
    _TAG_TUPLES.setdefault(shared, shared)
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
