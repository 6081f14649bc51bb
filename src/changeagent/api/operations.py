"""Operational endpoints: /, /health, /config, /cluster and /diagnostics."""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import threading
import traceback
from typing import Any

import orjson
import psutil
import yaml
from aiohttp import web

from changeagent.api.context import state_of
from changeagent.api.errors import ApiError
from changeagent.config import settings_from_yaml, settings_to_yaml

YAML_TYPES = frozenset({"application/yaml", "text/yaml", "application/x-yaml", "text/x-yaml"})
BASE36_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(number: int) -> str:
    if number == 0:
        return "0"
    digits = []
    while number:
        number, remainder = divmod(number, 36)
        digits.append(BASE36_DIGITS[remainder])
    return "".join(reversed(digits))


def json_response(document: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(document), content_type="application/json")


def text_response(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


async def root(request: web.Request) -> web.Response:
    prefix = state_of(request).prefix
    names = ("changes", "cluster", "config", "diagnostics", "health")
    links = {name: f"{prefix}/{name}" for name in names}
    links["openapi"] = f"{prefix}/openapi.json"
    return json_response(links)


# Health --------------------------------------------------------------------


async def get_health(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.marked_down:
        return text_response("marked down", 503)
    if state.node.failure is not None:
        return text_response(f"failed: {state.node.failure}", 503)
    if state.node.closing:
        return text_response("shutting down", 503)
    return text_response("ok")


async def set_health(request: web.Request) -> web.Response:
    form = await request.post()
    value = form.get("up")
    if not isinstance(value, str) or value.lower() not in ("true", "false"):
        raise ApiError(400, "send form field up=true or up=false")
    state = state_of(request)
    state.marked_down = value.lower() == "false"
    return await get_health(request)


# Config --------------------------------------------------------------------


def yaml_mapping_present(body: bytes) -> bool:
    try:
        return isinstance(yaml.safe_load(body), dict)
    except yaml.YAMLError:
        return True  # let the settings parser name the syntax error


def yaml_response(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/yaml")


async def get_config(request: web.Request) -> web.Response:
    return yaml_response(settings_to_yaml(state_of(request).node.settings))


async def put_config(request: web.Request) -> web.Response:
    if request.content_type not in YAML_TYPES:
        raise ApiError(415, "PUT /config needs Content-Type: application/yaml or text/yaml")
    node = state_of(request).node
    body = await request.read()
    if not yaml_mapping_present(body):
        raise ApiError(400, "send the settings as a YAML mapping, e.g. minPurgeRecords: 10")
    settings = settings_from_yaml(body, base=node.settings)
    applied = await node.update_settings(settings)
    return yaml_response(settings_to_yaml(applied))


# Cluster (standalone for now) ----------------------------------------------


async def get_cluster(request: web.Request) -> web.Response:
    node = state_of(request).node
    return json_response(
        {"clusterId": base36(node.cluster_id), "leader": "0", "term": node.term, "members": {}}
    )


async def get_members(request: web.Request) -> web.Response:
    return json_response({})


async def get_member(request: web.Request) -> web.Response:
    raise ApiError(404, "not a member of this cluster")


async def add_member(request: web.Request) -> web.Response:
    raise ApiError(501, "clustering is not available in this version yet; this node is standalone")


# Diagnostics ---------------------------------------------------------------


async def diagnostics(request: web.Request) -> web.Response:
    prefix = state_of(request).prefix
    names = ("id", "raft", "raft/state", "raft/leader", "stack", "memory", "cpu")
    return json_response({name: f"{prefix}/diagnostics/{name}" for name in names})


async def node_id(request: web.Request) -> web.Response:
    return text_response(base36(state_of(request).node.node_id))


async def raft_state(request: web.Request) -> web.Response:
    return text_response(state_of(request).node.state)


async def raft_leader(request: web.Request) -> web.Response:
    return text_response("0")


async def raft_status(request: web.Request) -> web.Response:
    node = state_of(request).node
    storage = node.storage
    return json_response(
        {
            "id": base36(node.node_id),
            "state": node.state,
            "leader": "0",
            "term": node.term,
            "firstIndex": storage.first_index(),
            "lastIndex": storage.last_index(),
            "appliedIndex": node.applied_index,
            "committedIndex": node.commit_index,
            "longPolls": node.long_poll_count,
            "purgeChecks": node.purge_checks,
        }
    )


async def stack(request: web.Request) -> web.Response:
    """Every thread's stack and every asyncio task's, for debugging a stuck node."""
    out = io.StringIO()
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"Thread {names.get(ident, ident)}:\n")
        out.write("".join(traceback.format_stack(frame)))
        out.write("\n")
    for task in asyncio.all_tasks():
        out.write(f"Task {task.get_name()}:\n")
        task.print_stack(file=out)
        out.write("\n")
    return text_response(out.getvalue())


async def memory(request: web.Request) -> web.Response:
    info = psutil.Process().memory_info()
    return json_response(
        {
            "rssBytes": info.rss,
            "vmsBytes": info.vms,
            "gcCounts": list(gc.get_count()),
            "gcObjects": len(gc.get_objects()),
        }
    )


async def cpu(request: web.Request) -> web.Response:
    times = psutil.Process().cpu_times()
    return json_response(
        {
            "userSeconds": times.user,
            "systemSeconds": times.system,
            "threads": threading.active_count(),
        }
    )
