"""A change as clients send it and as it is stored: parsing and the wire form.

The leader builds a change's JSON bytes once, when it accepts it; those bytes are
the Raft entry's data, what storage keeps, and what every read returns. Reads are
therefore concatenations of stored bytes, never re-encodings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

TAGS_MAX = 64
TAG_BYTES_MAX = 256
# Field names a client may send alongside "data". `_id` and `_ts` are accepted and
# ignored so that a change read from one server can be posted to another.
BODY_FIELDS = frozenset({"data", "tags", "type", "_id", "_ts"})
TYPE_MAX = 2**31 - 1


class ChangeError(ValueError):
    """A request body that is not a valid change; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class NewChange:
    """A validated change before the leader gives it an index and timestamp."""

    type: int
    tags: tuple[str, ...]
    data_json: bytes  # compact JSON of the data value


def parse_change_body(body: bytes) -> NewChange:
    """Validate a POST /changes body.

    ChangeAgent compatibility: an object with "data" is a structured change; any
    other JSON value is stored whole as the data, except an object that carries
    "tags" or "type" without "data", which is surely a mistake and is refused.
    This runs for every write, so the common shapes take the shortest path.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if not body.strip():
            raise ChangeError(
                'request body is empty; send a JSON change such as {"data": ...}'
            ) from None
        raise ChangeError(f"request body is not valid JSON: {error}") from None
    if type(document) is not dict or "data" not in document:
        if isinstance(document, dict) and ("tags" in document or "type" in document):
            raise ChangeError('a change with "tags" or "type" must carry its value in "data"')
        return NewChange(type=0, tags=(), data_json=orjson.dumps(document))
    if len(document) == 1:  # {"data": ...}: the common case
        return NewChange(type=0, tags=(), data_json=orjson.dumps(document["data"]))
    if not BODY_FIELDS.issuperset(document):
        unknown = sorted(key for key in document if key not in BODY_FIELDS)
        raise ChangeError(f"unknown field {unknown[0]!r}; a change has data, tags and type")
    return NewChange(
        type=_parse_type(document.get("type", 0)),
        tags=_parse_tags(document.get("tags")),
        data_json=orjson.dumps(document["data"]),
    )


# `{"_id":N,"_ts":N,"type":N,"data":` and `}` around the data, with 20-digit numbers.
_STORED_FIELDS_BYTES_MAX = 100


def stored_bytes_max(change: NewChange) -> int:
    """An upper bound on the size of the change's stored form (`encode_change`)."""
    tags = len(orjson.dumps(change.tags)) + len(',"tags":') if change.tags else 0
    return _STORED_FIELDS_BYTES_MAX + tags + len(change.data_json)


def encode_change(index: int, timestamp_ns: int, change: NewChange) -> bytes:
    """The change's final JSON bytes, in ChangeAgent's field order."""
    parts = [b'{"_id":', str(index).encode(), b',"_ts":', str(timestamp_ns).encode()]
    if change.type:
        parts += [b',"type":', str(change.type).encode()]
    if change.tags:
        parts += [b',"tags":', orjson.dumps(change.tags)]
    parts += [b',"data":', change.data_json, b"}"]
    return b"".join(parts)


def _parse_type(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChangeError('"type" must be an integer >= 0')
    if value < 0:
        raise ChangeError('"type" must be >= 0; negative types are reserved for internal entries')
    if value > TYPE_MAX:
        raise ChangeError(f'"type" must be at most {TYPE_MAX}')
    return int(value)


def _parse_tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise ChangeError('"tags" must be a list of strings')
    if len(value) > TAGS_MAX:
        raise ChangeError(f'"tags" may hold at most {TAGS_MAX} tags')
    if any(len(tag.encode()) > TAG_BYTES_MAX for tag in value):
        raise ChangeError(f"a tag may be at most {TAG_BYTES_MAX} bytes long")
    # Duplicates carry no meaning for an OR filter; keep the first of each.
    return tuple(dict.fromkeys(value))
