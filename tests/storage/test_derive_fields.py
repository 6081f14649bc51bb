"""`derive_fields`: the timestamp and tags the writer stores for a change, read from
its JSON. It runs once per stored change (also on a catching-up member), so it has
a fast path; this checks it against the plain definition on arbitrary input."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from changeagent.storage.records import ChangeFields, derive_fields


def reference(body: bytes) -> tuple[int, tuple[str, ...]]:
    """The definition: `_ts` when it is an int (not a bool), else 0; the string
    items of `tags` when it is a list, each once, in order; nothing for a body that
    is not a JSON object."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0, ()
    if not isinstance(document, dict):
        return 0, ()
    ts = document.get("_ts", 0)
    if not isinstance(ts, int) or isinstance(ts, bool):
        ts = 0
    raw = document.get("tags", ())
    if not isinstance(raw, list):
        return ts, ()
    return ts, tuple(dict.fromkeys(tag for tag in raw if isinstance(tag, str)))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["a", "b", "c", "tag", "ünï", ""]),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
tag_lists = st.lists(
    st.one_of(st.sampled_from(["a", "b", "c", "tag"]), scalars, st.lists(scalars, max_size=2)),
    max_size=5,
)


@given(ts=json_values, tags=st.one_of(tag_lists, json_values), data=json_values)
def test_changes_shaped_like_ours(ts: Any, tags: Any, data: Any) -> None:
    body = orjson.dumps({"_id": 1, "_ts": ts, "tags": tags, "data": data})
    for _ in range(2):  # the second time through the cache of tag lists
        fields = derive_fields(body)
        assert isinstance(fields, ChangeFields)
        assert (fields.ts, fields.tags) == reference(body)


@given(document=json_values)
def test_any_json(document: Any) -> None:
    body = orjson.dumps(document)
    assert tuple(derive_fields(body)) == reference(body)


@given(body=st.binary(max_size=40))
def test_any_bytes(body: bytes) -> None:
    assert tuple(derive_fields(body)) == reference(body)


def test_equal_tag_lists_share_one_interned_tuple() -> None:
    first = derive_fields(b'{"_ts":1,"tags":["x-shared","y-shared","x-shared"],"data":1}')
    second = derive_fields(b'{"_ts":2,"tags":["x-shared","y-shared"],"data":2}')
    assert first.tags == ("x-shared", "y-shared")
    assert first.tags is second.tags
    assert first.tags[0] is sys.intern("x-shared")
