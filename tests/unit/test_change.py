"""POST /changes bodies: ChangeAgent-compatible parsing and the stored wire form."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from changeagent.change import ChangeError, NewChange, encode_change, parse_change_body


def test_structured_change() -> None:
    change = parse_change_body(b'{"tags":["a","b"],"type":3,"data":{"x":[1,2]}}')
    assert change == NewChange(type=3, tags=("a", "b"), data_json=b'{"x":[1,2]}')
    assert encode_change(5, 77, change) == (
        b'{"_id":5,"_ts":77,"type":3,"tags":["a","b"],"data":{"x":[1,2]}}'
    )


@pytest.mark.parametrize(
    ("body", "data"),
    [
        (b'{"hello":"world"}', {"hello": "world"}),
        (b'"a string"', "a string"),
        (b"42", 42),
        (b"null", None),
        (b"[1,2]", [1, 2]),
        (b"{}", {}),
    ],
)
def test_any_other_value_is_stored_whole_as_data(body: bytes, data: object) -> None:
    change = parse_change_body(body)
    assert change.type == 0 and change.tags == ()
    assert orjson.loads(encode_change(2, 1, change)) == {"_id": 2, "_ts": 1, "data": data}


def test_type_zero_and_empty_tags_are_omitted() -> None:
    change = parse_change_body(b'{"data":1,"type":0,"tags":[]}')
    assert encode_change(2, 1, change) == b'{"_id":2,"_ts":1,"data":1}'


def test_ids_from_another_server_are_ignored() -> None:
    change = parse_change_body(b'{"_id":9,"_ts":3,"data":"x"}')
    assert encode_change(2, 1, change) == b'{"_id":2,"_ts":1,"data":"x"}'


def test_duplicate_tags_are_dropped() -> None:
    assert parse_change_body(b'{"data":1,"tags":["a","b","a"]}').tags == ("a", "b")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"{", "not valid JSON"),
        (b'{"tags":["a"]}', 'must carry its value in "data"'),
        (b'{"type":1}', 'must carry its value in "data"'),
        (b'{"data":1,"tags":"a"}', '"tags" must be a list of strings'),
        (b'{"data":1,"tags":[1]}', '"tags" must be a list of strings'),
        (b'{"data":1,"type":-1}', "negative types are reserved"),
        (b'{"data":1,"type":1.5}', '"type" must be an integer'),
        (b'{"data":1,"type":true}', '"type" must be an integer'),
        (b'{"data":1,"type":"1"}', '"type" must be an integer'),
        (b'{"data":1,"colour":"red"}', "unknown field 'colour'"),
        (b'{"data":1,"tags":[' + b",".join([b'"t"'] * 65) + b"]}", "at most 64 tags"),
    ],
)
def test_bad_bodies_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(ChangeError) as raised:
        parse_change_body(body)
    assert message in str(raised.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


# A tag is at most 256 bytes: 64 characters of up to 4 bytes each.
@given(
    data=json_values,
    tags=st.lists(st.text(max_size=64), max_size=5),
    change_type=st.integers(0, 1000),
)
def test_encoded_change_is_the_json_it_claims(
    data: object, tags: list[str], change_type: int
) -> None:
    body = orjson.dumps({"data": data, "tags": tags, "type": change_type})
    decoded = orjson.loads(encode_change(10, 20, parse_change_body(body)))
    assert decoded["_id"] == 10 and decoded["_ts"] == 20 and decoded["data"] == data
    assert decoded.get("tags", []) == list(dict.fromkeys(tags))
    assert decoded.get("type", 0) == change_type
