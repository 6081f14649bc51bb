"""Operational endpoints: /, /health, /config, /cluster, /diagnostics and /metrics."""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import threading
import traceback
from typing import Any

import orjson
from aiohttp import web

from changeagent.api.context import ApiState, state_of
from changeagent.api.errors import ApiError
from changeagent.api.links import base_url
from changeagent.config import settings_from_yaml, settings_to_yaml
from changeagent.ids import format_id, parse_id
from changeagent.node.archiver import ArchiveStatus
from changeagent.version import package_version

YAML_TYPES = frozenset({"application/yaml", "text/yaml", "application/x-yaml", "text/x-yaml"})


def json_response(document: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(document), content_type="application/json")


def text_response(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


async def root(request: web.Request) -> web.Response:
    base = base_url(request, state_of(request).prefix)
    names = ("changes", "cluster", "config", "diagnostics", "health", "metrics", "version")
    links = {name: f"{base}/{name}" for name in names}
    links["openapi"] = f"{base}/openapi.json"
    links["ui"] = f"{base}/ui/"  # the dashboard (api/ui.py)
    return json_response(links)


# Health --------------------------------------------------------------------


def _health(state: ApiState) -> tuple[int, str]:
    """What GET /health answers: (status, text)."""
    if state.marked_down:
        return 503, "marked down"
    if state.node.failure is not None:
        return 503, f"failed: {state.node.failure}"
    if state.node.closing:
        return 503, "shutting down"
    return 200, "ok"


async def get_health(request: web.Request) -> web.Response:
    status, text = _health(state_of(request))
    return text_response(text, status)


async def set_health(request: web.Request) -> web.Response:
    """Mark the node up or down. The update itself succeeded, so it answers 200
    (as ChangeAgent did; `curl -f` scripts rely on it) with the new state; only
    GET /health answers 503 while the node is down."""
    form = await request.post()
    value = form.get("up")
    if not isinstance(value, str) or value.lower() not in ("true", "false"):
        raise ApiError(400, "send form field up=true or up=false")
    state = state_of(request)
    state.marked_down = value.lower() == "false"
    return json_response({"up": not state.marked_down, "health": _health(state)[1]})


# Config --------------------------------------------------------------------


def yaml_mapping_present(body: bytes) -> bool:
    import yaml  # at first use (as psutil below): ~1 MB each of an idle node's RSS

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


# Cluster -------------------------------------------------------------------


def _members_map(members: dict[int, str]) -> dict[str, str]:
    return {format_id(member): address for member, address in members.items()}


def cluster_document(request: web.Request) -> dict[str, Any]:
    state = state_of(request)
    status, members = state.node.status(), state.members
    return {
        "clusterId": format_id(status.cluster_id),
        "leader": format_id(status.leader_id),
        "term": status.term,
        "members": _members_map(members.members()),
        "roles": {format_id(member): role for member, role in members.roles().items()},
        "readOnly": _sorted_ids(members.kept_learners()),
        "quorum": members.quorum_size(),
    }


def _sorted_ids(ids: frozenset[int]) -> list[str]:
    return sorted(format_id(member) for member in ids)  # as "voters" and "learners" are


async def get_cluster(request: web.Request) -> web.Response:
    return json_response(cluster_document(request))


async def get_members(request: web.Request) -> web.Response:
    return json_response(_members_map(state_of(request).members.members()))


def _member_id(request: web.Request) -> int:
    text = request.match_info["id"]
    try:
        return parse_id(text)
    except ValueError:
        raise ApiError(400, f"member id must be a base-36 node id, not {text[:40]!r}") from None


async def get_member(request: web.Request) -> web.Response:
    address = state_of(request).members.members().get(_member_id(request))
    if address is None:
        raise ApiError(404, "not a member of this cluster")
    return text_response(address)


async def _fields_from(request: web.Request, example: str) -> dict[str, Any]:
    """The request's form (application/x-www-form-urlencoded) or JSON object."""
    if request.content_type not in ("application/json", "application/x-www-form-urlencoded"):
        raise ApiError(415, f"send {example} as a form (application/x-www-form-urlencoded) or JSON")
    if request.content_type == "application/x-www-form-urlencoded":
        return dict(await request.post())
    try:
        document = orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ApiError(400, f"send {example} as a JSON object")
    return document


def _role_field(fields: dict[str, Any], default: str | None) -> str:
    role = fields.get("role", default)
    if role not in ("voter", "learner"):
        shown = repr(role)[:40] if role is not None else "nothing"
        raise ApiError(400, f"role must be voter or learner, not {shown}")
    return str(role)


async def add_member(request: web.Request) -> web.Response:
    fields = await _fields_from(request, "address=host:port (and optionally role=learner)")
    address = fields.get("address")
    if not isinstance(address, str) or not address:
        raise ApiError(400, "send the new member's address as address=host:port")
    role = _role_field(fields, "voter")
    await state_of(request).members.add(address, role)
    return json_response(cluster_document(request))


async def put_member(request: web.Request) -> web.Response:
    """Promote (role=voter) or demote (role=learner: a read-only member) a member."""
    node_id = _member_id(request)
    role = _role_field(await _fields_from(request, "role=voter or role=learner"), None)
    await state_of(request).members.set_role(node_id, role)
    return json_response(cluster_document(request))


async def delete_member(request: web.Request) -> web.Response:
    await state_of(request).members.remove(_member_id(request))
    return json_response(cluster_document(request))


# Diagnostics ---------------------------------------------------------------


async def version(request: web.Request) -> web.Response:
    return json_response({"version": package_version()})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (text format; OpenMetrics when the Accept header asks)."""
    body, content_type = state_of(request).metrics.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def diagnostics(request: web.Request) -> web.Response:
    """Links to every diagnostic, and the version (the one value that is no link)."""
    base = base_url(request, state_of(request).prefix)
    names = ("id", "raft", "raft/state", "raft/leader", "stack", "memory", "cpu")
    document = {name: f"{base}/diagnostics/{name}" for name in names}
    document["version"] = package_version()
    return json_response(document)


async def node_id(request: web.Request) -> web.Response:
    return text_response(format_id(state_of(request).node.node_id))


async def raft_state(request: web.Request) -> web.Response:
    return text_response(state_of(request).node.status().state)


async def raft_leader(request: web.Request) -> web.Response:
    return text_response(format_id(state_of(request).node.status().leader_id))


async def raft_status(request: web.Request) -> web.Response:
    state = state_of(request)
    status, members = state.node.status(), state.members
    return json_response(
        {
            "id": format_id(status.node_id),
            "clusterId": format_id(status.cluster_id),
            "state": status.state,
            "leader": format_id(status.leader_id),
            "term": status.term,
            "firstIndex": status.first_index,
            "lastIndex": status.last_index,
            "appliedIndex": status.applied_index,
            "committedIndex": status.committed_index,
            "voters": sorted(format_id(member) for member in status.voters),
            "learners": sorted(format_id(member) for member in status.learners),
            "roles": {format_id(member): role for member, role in members.roles().items()},
            "readOnly": _sorted_ids(members.kept_learners()),
            "quorum": members.quorum_size(),
            "peers": {
                format_id(peer): {
                    "match": progress.match,
                    "next": progress.next,
                    "state": progress.state.value,
                    "recentActive": progress.recent_active,
                    "reachable": progress.reachable,
                    "learner": progress.learner,
                }
                for peer, progress in status.peers.items()
            },
            "longPolls": status.long_polls,
            "purgeChecks": status.purge_checks,
            "archive": _archive_document(state.node.archive_status()),
        }
    )


def _archive_document(archive: ArchiveStatus | None) -> dict[str, Any] | None:
    if archive is None:
        return None
    return {
        "dir": archive.directory,
        "archivedThrough": archive.archived_through,
        "failure": archive.failure,
    }


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
    import psutil

    info = psutil.Process().memory_info()
    return json_response(
        {
            "rssBytes": info.rss,
            "vmsBytes": info.vms,
            "gcCounts": list(gc.get_count()),
            "gcObjects": len(gc.get_objects()),
            "gcThresholds": list(gc.get_threshold()),
            "gcFrozenObjects": gc.get_freeze_count(),
        }
    )


async def cpu(request: web.Request) -> web.Response:
    import psutil

    times = psutil.Process().cpu_times()
    return json_response(
        {
            "userSeconds": times.user,
            "systemSeconds": times.system,
            "threads": threading.active_count(),
        }
    )
