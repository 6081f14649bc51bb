"""Node and cluster ids in base 36 (changeagent/ids.py), as ChangeAgent showed them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from changeagent.ids import ID_MAX, format_id, parse_id


@pytest.mark.parametrize(
    ("number", "text"),
    [(0, "0"), (1, "1"), (35, "z"), (36, "10"), (1000, "rs"), (ID_MAX, "1y2p0ij32e8e7")],
)
def test_format_and_parse(number: int, text: str) -> None:
    assert format_id(number) == text
    assert parse_id(text) == number


def test_parse_accepts_upper_case() -> None:
    assert parse_id("RS") == 1000


@given(st.integers(min_value=0, max_value=ID_MAX))
def test_round_trip(number: int) -> None:
    assert parse_id(format_id(number)) == number


@pytest.mark.parametrize(
    "text",
    ["", " 1", "1 ", "+1", "-1", "1_0", "rs!", "not-base36", "\u0131", "1y2p0ij32e8e8", "0" * 14],
)
def test_parse_refuses_anything_but_base_36_digits(text: str) -> None:
    with pytest.raises(ValueError):
        parse_id(text)


def test_a_negative_number_keeps_its_sign_but_never_parses() -> None:
    assert format_id(-1000) == "-rs"
    with pytest.raises(ValueError):
        parse_id("-rs")
