"""Query-parameter parsing: every bad value is a 400 that names the parameter."""

from __future__ import annotations

import math

from aiohttp import web

from changeagent.api.errors import ApiError
from changeagent.node.node import NodeLimits
from changeagent.node.query import ChangeQuery

INDEX_MAX = 2**63 - 1


def integer_parameter(
    request: web.Request, name: str, default: int, low: int, high: int = INDEX_MAX
) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text, 10)
    except ValueError:
        raise ApiError(400, f"parameter {name!r} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"parameter {name!r} must be between {low} and {high}, got {value}")
    return value


def seconds_parameter(request: web.Request, name: str, high: float) -> float:
    text = request.query.get(name)
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ApiError(
            400, f"parameter {name!r} must be a number of seconds, got {text!r}"
        ) from None
    if not math.isfinite(value) or not 0 <= value <= high:
        raise ApiError(400, f"parameter {name!r} must be between 0 and {high:g} seconds")
    return value


def change_query(request: web.Request, limits: NodeLimits) -> ChangeQuery:
    since = integer_parameter(request, "since", 0, 0)
    limit = integer_parameter(request, "limit", limits.limit_default, 1, limits.limit_max)
    tags = tuple(sorted(set(request.query.getall("tag", []))))
    type_text = request.query.get("type")
    change_type = None if type_text is None else integer_parameter(request, "type", 0, 0, 2**31 - 1)
    return ChangeQuery(since=since, limit=limit, tags=tags, type=change_type)


def index_in_path(request: web.Request) -> int:
    text = request.match_info["id"]
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > INDEX_MAX:
        raise ApiError(400, "Invalid ID")
    return int(text)
