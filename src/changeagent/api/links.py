"""Absolute links for GET / and GET /diagnostics, as ChangeAgent gave them.

A link is `scheme://host` + the `-P` prefix + the path, so a client can follow
it with a plain GET. Behind a proxy the scheme and host come from
`X-Forwarded-Proto` and `X-Forwarded-Host`. Those headers (and `Host`) are
client input: each is used only when it is a well-formed scheme or `host[:port]`,
else the link falls back to what this connection says (its TLS, its Host header,
its local address), so a bad header cannot put arbitrary text into a link.
"""

from __future__ import annotations

import ipaddress
import re

from aiohttp import web

SCHEMES = frozenset({"http", "https"})
HOST_CHARACTERS_MAX = 253 + len("[]:65535")
# A DNS name or IPv4 address: dot-separated labels of letters, digits, '-' and '_'.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_IPV6 = re.compile(r"\[([0-9A-Fa-f:.]+)\]")
_PORT = re.compile(r"[0-9]{1,5}")


def base_url(request: web.Request, prefix: str) -> str:
    """`scheme://host` + prefix, for links a client can follow from where it is."""
    return f"{link_scheme(request)}://{link_host(request)}{prefix}"


def link_scheme(request: web.Request) -> str:
    forwarded = _first(request.headers.get("X-Forwarded-Proto", "")).lower()
    return forwarded if forwarded in SCHEMES else request.scheme


def link_host(request: web.Request) -> str:
    forwarded = _first(request.headers.get("X-Forwarded-Host", ""))
    if valid_host(forwarded):
        return forwarded
    own = request.headers.get("Host", "")
    if valid_host(own):
        return own
    return _local_address(request)


def valid_host(text: str) -> bool:
    """`host` or `host:port`: a DNS name, an IPv4 address or a bracketed IPv6
    address, and a port from 1 to 65535."""
    if not text or len(text) > HOST_CHARACTERS_MAX:
        return False
    host, port = _split_port(text)
    if port is not None and not (_PORT.fullmatch(port) and 0 < int(port) <= 65535):
        return False
    bracketed = _IPV6.fullmatch(host)
    if bracketed is not None:
        return _is_ipv6(bracketed.group(1))
    return len(host) <= 253 and _NAME.fullmatch(host) is not None


def _split_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        host, _, rest = text.partition("]")
        if not rest:
            return text, None
        return host + "]", rest[1:] if rest.startswith(":") else "-"  # "-" is never a port
    host, colon, port = text.rpartition(":")
    return (host, port) if colon else (text, None)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _first(header: str) -> str:
    """The first value of a list header (`a, b` after several proxies: a is the client's)."""
    return header.split(",", 1)[0].strip()


def _local_address(request: web.Request) -> str:
    """The address this connection reached, e.g. 127.0.0.1:8080 or [::1]:8080."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        address, port = str(sockname[0]), int(sockname[1])
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return "localhost"
