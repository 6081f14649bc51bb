"""Node and cluster ids as people see them: base 36, as ChangeAgent showed them.

Ids are random positive 63-bit integers inside the node; everywhere they reach a
person or a client (the HTTP API, log lines, error messages) they are written in
base 36 with lowercase digits, and ids in requests are read back the same way.
`0` means "none" (no cluster, no leader).
"""

from __future__ import annotations

import re

DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
ID_MAX = 2**63 - 1


def format_id(number: int) -> str:
    """`number` in base 36, e.g. 35 -> "z". Ids are never negative, but a log
    line about a malformed message may show one: it gets a minus sign."""
    if number < 0:
        return "-" + format_id(-number)
    if number == 0:
        return "0"
    digits = []
    while number:
        number, remainder = divmod(number, 36)
        digits.append(DIGITS[remainder])
    return "".join(reversed(digits))


def _at_most(limit: str) -> list[str]:
    """Regex alternatives for the strings of len(limit) base-36 digits <= limit:
    equal up to some digit, smaller there, anything after; or limit itself."""
    alternatives = []
    for position, digit in enumerate(limit):
        value = DIGITS.index(digit)
        if value > 0:
            last = DIGITS[value - 1]
            smaller = f"[0-{last}]" if value <= 10 else f"[0-9a-{last}]"
            rest = len(limit) - position - 1
            anything = f"[0-9a-z]{{{rest}}}" if rest else ""
            alternatives.append(limit[:position] + smaller + anything)
    return [*alternatives, limit]


_ID_MAX_TEXT = format_id(ID_MAX)  # "1y2p0ij32e8e7"
# Every id from 0 to 2**63 - 1 in lowercase base 36 (leading zeros allowed), and
# nothing else: the OpenAPI document uses it for ids in paths.
ID_PATTERN = f"^(?:[0-9a-z]{{1,{len(_ID_MAX_TEXT) - 1}}}|{'|'.join(_at_most(_ID_MAX_TEXT))})$"
_ID = re.compile(ID_PATTERN)


def parse_id(text: str) -> int:
    """The id written as `text` in base 36 (either case). ValueError when `text`
    is empty, has anything but base-36 digits (no sign, space or underscore,
    which `int(text, 36)` would take), or is above 2**63 - 1."""
    if not text.isascii() or _ID.fullmatch(text.lower()) is None:
        raise ValueError(f"not a base-36 id: {text[:40]!r}")
    return int(text, 36)
