"""Go-syntax durations: parse and format must match Go's time package."""

import pytest

from changeagent.durations import DurationError, format_duration_ns, parse_duration_ns

MS = 1_000_000
S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("0s", 0),
        ("300ms", 300 * MS),
        ("-1.5h", -5400 * S),
        ("2h45m", 9900 * S),
        ("1.5s", 1500 * MS),
        ("100us", 100_000),
        ("100µs", 100_000),
        ("7ns", 7),
        ("+10s", 10 * S),
        (".5s", 500 * MS),
        ("1h0m0s", 3600 * S),
    ],
)
def test_parse(text: str, nanoseconds: int) -> None:
    assert parse_duration_ns(text) == nanoseconds


@pytest.mark.parametrize("text", ["", "10", "s", "1x", "1.5", "ms", "1s2", "--1s", "1 s", "1e3s"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration_ns(text)


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (0, "0s"),
        (300 * MS, "300ms"),
        (1500 * MS, "1.5s"),
        (90 * S, "1m30s"),
        (3600 * S, "1h0m0s"),
        (-5400 * S, "-1h30m0s"),
        (100_000, "100µs"),
        (1, "1ns"),
        (10 * S, "10s"),
    ],
)
def test_format_like_go(nanoseconds: int, text: str) -> None:
    assert format_duration_ns(nanoseconds) == text


@pytest.mark.parametrize(
    "nanoseconds", [0, 1, 999, 1_500, 2 * MS, 59 * S, 61 * S, 3 * 3600 * S + 7]
)
def test_round_trip(nanoseconds: int) -> None:
    assert parse_duration_ns(format_duration_ns(nanoseconds)) == nanoseconds
