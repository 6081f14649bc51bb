"""Which Host / X-Forwarded-Host values may go into an absolute link (api/links.py)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from changeagent.api.links import base_url, valid_host


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8080",
        "api.example.com",
        "api.example.com.",
        "node_1.internal:1",
        "10.0.0.7:65535",
        "[::1]",
        "[::1]:8080",
        "[2001:db8::7]:443",
        "a" * 63 + ".example",
    ],
)
def test_well_formed_hosts(host: str) -> None:
    assert valid_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "evil.example/path",
        "user@evil.example",
        "evil example",
        "evil.example:0",
        "evil.example:65536",
        "evil.example:80:80",
        "evil.example:",
        "evil.example:+80",
        "-evil.example",
        "evil..example",
        "::1",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[not-ipv6]",
        "[::1]:99999",
        "a" * 64 + ".example",
        "évil.example",
        "evil.example\r\nX-Injected: 1",
        "x." * 200,
    ],
)
def test_malformed_hosts(host: str) -> None:
    assert not valid_host(host)


def test_forwarded_values_win_only_when_well_formed() -> None:
    request = make_mocked_request(
        "GET",
        "/",
        headers={"Host": "node:8080", "X-Forwarded-Proto": "HTTPS", "X-Forwarded-Host": "x y"},
    )
    assert base_url(request, "/ca") == "https://node:8080/ca"
