"""Go-syntax durations ("300ms", "-1.5h", "2h45m"), as ChangeAgent's config used them.

Durations are held as integer nanoseconds so that parsing and formatting round-trip
exactly, the way Go's time.Duration does.
"""

from __future__ import annotations

import re

NANOSECONDS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # micro sign U+00B5
    "μs": 1_000,  # Greek mu U+03BC
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}

_COMPONENT = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_MAX_NANOSECONDS = 2**63 - 1


class DurationError(ValueError):
    """A string that is not a Go duration."""


def parse_duration_ns(text: str) -> int:
    """Parse a Go duration string into nanoseconds.

    Like Go, "0" alone needs no unit, a leading sign is allowed, and every other
    number needs a unit. A bare number other than 0 is rejected because "10"
    could mean seconds or milliseconds, and guessing would hide mistakes.
    """
    original = text
    text = text.strip()
    sign = 1
    if text and text[0] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise DurationError(f"invalid duration {original!r}: empty")
    total = 0.0
    position = 0
    for match in _COMPONENT.finditer(text):
        if match.start() != position:
            break
        number, unit = match.groups()
        total += float(number) * NANOSECONDS_PER_UNIT[unit]
        position = match.end()
    if position != len(text):
        raise DurationError(
            f"invalid duration {original!r}: expected numbers with units ns, us, ms, s, m or h"
        )
    if total > _MAX_NANOSECONDS:
        raise DurationError(f"invalid duration {original!r}: too large")
    return sign * round(total)


def format_duration_ns(nanoseconds: int) -> str:
    """Format nanoseconds the way Go's Duration.String does ("1h2m3.5s", "300ms", "0s")."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    value = abs(nanoseconds)
    if value < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if value >= size:
                return sign + _decimal(value, size) + unit
    hours, rest = divmod(value, NANOSECONDS_PER_UNIT["h"])
    minutes, rest = divmod(rest, NANOSECONDS_PER_UNIT["m"])
    text = ""
    if hours:
        text += f"{hours}h"
    if hours or minutes:
        text += f"{minutes}m"
    return sign + text + _decimal(rest, 1_000_000_000) + "s"


def _decimal(value: int, unit_size: int) -> str:
    whole, fraction = divmod(value, unit_size)
    if not fraction:
        return str(whole)
    digits = len(str(unit_size)) - 1
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")
