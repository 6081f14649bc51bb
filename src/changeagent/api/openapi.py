"""The OpenAPI 3 document of the whole HTTP API, served at /openapi.json.

A schemathesis run in the test suite checks every answer against it, so a change
to a handler that is not reflected here fails the build.
"""

from __future__ import annotations

from typing import Any

from changeagent.api.ui import UI_FILES
from changeagent.backup_format import CONTENT_TYPE
from changeagent.ids import ID_PATTERN
from changeagent.version import package_version

ERROR = {"$ref": "#/components/schemas/Error"}
TEXT = {"text/plain": {"schema": {"type": "string"}}}
DURATION = {
    "type": "string",
    "pattern": r"^[-+]?(0|([0-9]*\.?[0-9]+(ns|us|µs|μs|ms|s|m|h))+)$",
    "description": "Go duration syntax, e.g. 300ms, 1.5h, 2h45m",
}
SETTINGS = {
    "type": "object",
    "properties": {
        "minPurgeRecords": {"type": "integer", "minimum": 0},
        "minPurgeDuration": DURATION,
        "electionTimeout": DURATION,
        "heartbeatTimeout": DURATION,
        "webHooks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["uri"],
                "properties": {
                    "uri": {"type": "string", "pattern": "^https?://"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
YAML = {"application/yaml": {"schema": SETTINGS}}
INDEX_MAX = 2**63 - 1


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(ERROR)}


def _ok_json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": _json(schema)}


def _query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description, **extra}


CHANGE = {
    "type": "object",
    "required": ["_id", "_ts", "data"],
    "properties": {
        "_id": {"type": "integer", "minimum": 1},
        "_ts": {"type": "integer", "description": "nanoseconds since the epoch"},
        "type": {"type": "integer", "minimum": 1, "description": "omitted when 0"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "data": {},
    },
    "additionalProperties": False,
}

CHANGE_LIST = {
    "type": "object",
    "required": ["changes", "atStart", "atEnd"],
    "properties": {
        "changes": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}},
        "atStart": {"type": "boolean"},
        "atEnd": {"type": "boolean"},
        "missedChanges": {"type": "boolean", "description": "since lies below the purge point"},
        "firstRetained": {"type": "integer", "description": "first index still stored"},
    },
    "additionalProperties": False,
}


CONSISTENCY = {
    "name": "consistency",
    "in": "query",
    "required": False,
    "description": "local (default): this node's committed changes; linearizable: "
    "every write acknowledged before the read began (503 without a quorum)",
    "schema": {"type": "string", "enum": ["local", "linearizable"]},
}


def _get_changes_parameters(limit_max: int, block_max_s: float) -> list[dict[str, Any]]:
    return [
        _query("since", {"type": "integer", "minimum": 0}, "exclusive lower bound on _id"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": limit_max}, "maximum changes"),
        _query(
            "tag",
            {"type": "array", "items": {"type": "string"}},
            "ORed tag filter",
            style="form",
            explode=True,
        ),
        _query("type", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "type filter"),
        _query(
            "block", {"type": "number", "minimum": 0, "maximum": block_max_s}, "long-poll seconds"
        ),
        CONSISTENCY,
        _query(
            "feed",
            {"type": "string", "enum": ["continuous", "eventsource"]},
            "stream changes as they commit: NDJSON, or Server-Sent Events (also chosen by "
            "Accept: text/event-stream); `limit` then ends the stream after that many",
        ),
        _query(
            "heartbeat",
            {"type": "integer", "minimum": 100, "maximum": int(block_max_s * 1000)},
            "feeds: ms of quiet before a heartbeat (default 30000)",
        ),
        {
            "name": "Last-Event-ID",
            "in": "header",
            "schema": {"type": "string", "pattern": "^[0-9]{0,19}$"},
            "description": "eventsource: resume after this change id",
        },
    ]


NEW_CHANGE = {
    "oneOf": [
        {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {},
                "tags": {
                    "type": "array",
                    "items": {"type": "string"},
                    "maxItems": 64,
                    "nullable": True,
                },
                "type": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                "_id": {"description": "ignored: the server assigns it"},
                "_ts": {"description": "ignored: the server assigns it"},
            },
            "additionalProperties": False,
        },
        {
            "description": "any other object without data, tags or type is stored whole as data",
            "type": "object",
            "not": {"anyOf": [{"required": [name]} for name in ("data", "tags", "type")]},
        },
        {"not": {"type": "object"}, "description": "any other JSON value is stored as data"},
    ]
}


def _paths(limit_max: int, block_max_s: float) -> dict[str, Any]:
    return {
        "/": {
            "get": {"summary": "Links", "responses": {"200": _ok_json("links", {"type": "object"})}}
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _ok_json("doc", {"type": "object"})},
            }
        },
        "/changes": {
            "get": {
                "summary": "List committed changes after `since`, optionally waiting",
                "parameters": _get_changes_parameters(limit_max, block_max_s),
                "responses": {
                    "200": {
                        "description": "a page of changes, or with `feed` a stream of them",
                        "content": {
                            **_json({"$ref": "#/components/schemas/ChangeList"}),
                            "application/x-ndjson": {"schema": {"type": "string"}},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    "304": {"description": "If-None-Match: the page has not changed"},
                    "400": _error("bad parameter"),
                    "503": _error("data unavailable, or --max-streams streams are open"),
                },
            },
            "post": {
                "summary": "Append a change; answered once it is durable",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 256},
                    }
                ],
                "requestBody": {"required": True, "content": _json(NEW_CHANGE)},
                "responses": {
                    "200": _ok_json("the stored change", {"$ref": "#/components/schemas/Change"}),
                    "400": _error("not a valid change"),
                    "413": _error("body too large"),
                    "415": _error("not JSON"),
                    "503": _error("cannot store now; Retry-After says when to retry"),
                },
            },
        },
        "/changes/{id}": {
            "get": {
                "summary": "One change",
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": INDEX_MAX},
                    },
                    CONSISTENCY,
                ],
                "responses": {
                    "200": _ok_json("the change", {"$ref": "#/components/schemas/Change"}),
                    "400": _error("Invalid ID"),
                    "404": _error("Not found"),
                    "503": _error("data unavailable"),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Load-balancer health check",
                "responses": {
                    "200": {"description": "ok", "content": TEXT},
                    "503": {"description": "marked down or failed", "content": TEXT},
                },
            },
            "put": _health_update(),
            "post": _health_update(),
        },
        "/config": {
            "get": {
                "summary": "Settings as YAML",
                "responses": {"200": {"description": "settings", "content": YAML}},
            },
            "put": {
                "summary": "Replace settings (missing durations keep their values)",
                "requestBody": {
                    "required": True,
                    "content": {**YAML, "text/yaml": {"schema": SETTINGS}},
                },
                "responses": {
                    "200": {"description": "the new settings", "content": YAML},
                    "400": _error("invalid settings"),
                    "415": _error("not YAML"),
                    "503": _error("cannot store now"),
                },
            },
        },
        "/cluster": {
            "get": {
                "summary": "Cluster id and members",
                "responses": {"200": _ok_json("cluster", CLUSTER)},
            }
        },
        "/cluster/members": {
            "get": {"summary": "Members by id", "responses": {"200": _ok_json("members", MEMBERS)}},
            "post": {
                "summary": "Create a cluster (own address on a standalone node) or add a node",
                "description": "A node added as a voter (the default) joins as a learner "
                "and is promoted once it has caught up; with role=learner it stays a "
                "read-only member: it replicates everything, serves reads and forwards "
                "writes, but never votes nor counts toward a quorum.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": ADDRESS},
                        "application/json": {"schema": ADDRESS},
                    },
                },
                "responses": {
                    "200": _ok_json("the cluster with its members", CLUSTER),
                    "400": _error("bad address or role, or a node that cannot join"),
                    "409": _error(
                        "another membership change is in progress, or the node is a "
                        "member with another role"
                    ),
                    "415": _error("neither a form nor JSON"),
                    "503": _error("no leader, or the new member is still catching up"),
                },
            },
        },
        "/cluster/members/{id}": {
            "get": {
                "summary": "A member's address",
                "parameters": [MEMBER_ID],
                "responses": {
                    "200": {"description": "address", "content": TEXT},
                    "400": _error("not a base-36 id"),
                    "404": _error("not a member"),
                },
            },
            "put": {
                "summary": "Promote (role=voter) or demote (role=learner) a member",
                "description": "A demoted member stays a read-only learner; the leader "
                "may demote itself (it hands over once the change commits). Giving a "
                "member the role it has changes nothing.",
                "parameters": [MEMBER_ID],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": ROLE},
                        "application/json": {"schema": ROLE},
                    },
                },
                "responses": {
                    "200": _ok_json("the cluster with the member's new role", CLUSTER),
                    "400": _error("not a base-36 id, or no such role"),
                    "404": _error("not a member"),
                    "409": _error(
                        "another membership change is in progress; the learner is not "
                        "caught up or still joining; demoting would leave no voter, or "
                        "no quorum of reachable voters"
                    ),
                    "415": _error("neither a form nor JSON"),
                    "503": _error("no leader, or not committed in time"),
                },
            },
            "delete": {
                "summary": "Remove a member (it keeps its data and becomes standalone)",
                "parameters": [MEMBER_ID],
                "responses": {
                    "200": _ok_json("the cluster with its remaining members", CLUSTER),
                    "400": _error("not a base-36 id"),
                    "404": _error("not a member"),
                    "409": _error("another membership change is in progress"),
                    "503": _error("no leader, or not committed in time"),
                },
            },
        },
        "/version": {
            "get": {
                "summary": "The server's version",
                "responses": {"200": _ok_json("version", VERSION)},
            }
        },
        "/diagnostics": {"get": _diagnostic(_json(DIAGNOSTICS))},
        "/diagnostics/id": {"get": _diagnostic(TEXT)},
        "/diagnostics/raft": {"get": _diagnostic(_json({"type": "object"}))},
        "/diagnostics/raft/state": {"get": _diagnostic(TEXT)},
        "/diagnostics/raft/leader": {"get": _diagnostic(TEXT)},
        "/diagnostics/stack": {"get": _diagnostic(TEXT)},
        "/diagnostics/memory": {"get": _diagnostic(_json({"type": "object"}))},
        "/diagnostics/cpu": {"get": _diagnostic(_json({"type": "object"}))},
        **_ui_paths(),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of this node",
                "description": "The text exposition format (version 0.0.4), or "
                "OpenMetrics when the Accept header asks for it.",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {
                            **TEXT,
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    }
                },
            }
        },
        "/backup": {"get": _backup_operation()},
    }


def _backup_operation() -> dict[str, Any]:
    """GET /backup (api/backup.py; the file format is changeagent/backup_format.py)."""
    return {
        "summary": "A backup of this node's committed log, streamed while it serves",
        "description": "One file: a magic line, a JSON header line (commitIndex, "
        "changes, databaseBytes, ...), the SQLite database holding the committed "
        "prefix of the log (no cluster secret), and a trailer line `SHA256 <hex>` over "
        "everything before it. `changeagent backup` saves and checks it; `changeagent "
        "restore` makes a standalone node of it. One backup at a time per node.",
        "responses": {
            "200": {
                "description": "the backup file (Content-Length is its size)",
                "content": {CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            },
            "409": _error("a backup of this node is already running"),
            "503": _error("the node stopped serving, or the copy failed (e.g. disk full)"),
        },
    }


def _ui_paths() -> dict[str, Any]:
    """The dashboard (api/ui.py): an HTML page and its static files."""
    html = {"text/html": {"schema": {"type": "string"}}}
    return {
        "/ui": {
            "get": {
                "summary": "Redirects to the dashboard, ui/",
                "responses": {"302": {"description": "Location: ui/ (relative)"}},
            }
        },
        "/ui/": {
            "get": {
                "summary": "The dashboard: one HTML page over this API",
                "responses": {"200": {"description": "the page", "content": html}},
            }
        },
        "/ui/{name}": {
            "get": {
                "summary": "A static file of the dashboard",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(UI_FILES)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the file (ETag; If-None-Match gets 304)",
                        "content": {
                            content_type.partition(";")[0]: {"schema": {"type": "string"}}
                            for content_type in sorted(set(UI_FILES.values()))
                        },
                    },
                    "404": _error("no such file"),
                },
            }
        },
    }


CLUSTER = {
    "type": "object",
    "required": ["clusterId", "members"],
    "properties": {
        "clusterId": {"type": "string"},
        "leader": {"type": "string"},
        "term": {"type": "integer"},
        "members": {"type": "object", "additionalProperties": {"type": "string"}},
        "roles": {
            "type": "object",
            "additionalProperties": {"type": "string", "enum": ["voter", "learner"]},
        },
        "readOnly": {
            "type": "array",
            "items": {"type": "string"},
            "description": "learners that stay learners (the others are joining)",
        },
        "quorum": {"type": "integer", "description": "voters that make a majority"},
    },
}
ROLE_NAME = {"type": "string", "enum": ["voter", "learner"]}
ADDRESS = {
    "type": "object",
    "required": ["address"],
    "properties": {
        "address": {"type": "string", "description": "host:port"},
        "role": {**ROLE_NAME, "default": "voter"},
    },
}
ROLE = {"type": "object", "required": ["role"], "properties": {"role": ROLE_NAME}}
MEMBER_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": ID_PATTERN, "description": "base-36 node id"},
}
MEMBERS = {"type": "object", "additionalProperties": {"type": "string"}}
VERSION = {
    "type": "object",
    "required": ["version"],
    "properties": {"version": {"type": "string"}},
    "additionalProperties": False,
}
DIAGNOSTICS = {
    "type": "object",
    "required": ["version"],
    "properties": {"version": {"type": "string", "description": "the server's version"}},
    "additionalProperties": {"type": "string", "description": "absolute link"},
}
HEALTH_STATE = {
    "type": "object",
    "required": ["up", "health"],
    "properties": {
        "up": {"type": "boolean", "description": "false while marked down"},
        "health": {"type": "string", "description": "what GET /health now answers"},
    },
    "additionalProperties": False,
}


def _health_update() -> dict[str, Any]:
    return {
        "summary": "Mark the node up or down for load balancers",
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["up"],
                        "properties": {"up": {"type": "string", "enum": ["true", "false"]}},
                    }
                }
            },
        },
        "responses": {
            "200": _ok_json("the new state (GET /health answers 503 while down)", HEALTH_STATE),
            "400": _error("bad form"),
        },
    }


def _diagnostic(content: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": "Diagnostics",
        "responses": {"200": {"description": "diagnostics", "content": content}},
    }


def openapi_document(
    prefix: str,
    limit_max: int,
    block_max_s: float,
    basic_auth: bool = False,
    client_certificates: bool = False,
) -> dict[str, Any]:
    """The document; `basic_auth` (-pw) and `client_certificates` (-cas) add
    their security schemes and require them everywhere they apply."""
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "changeagent", "version": package_version()},
        "paths": _paths(limit_max, block_max_s),
        "components": {
            "schemas": {
                "Change": CHANGE,
                "ChangeList": CHANGE_LIST,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
            }
        },
    }
    if prefix:
        document["servers"] = [{"url": prefix}]
    _add_security(document, basic_auth, client_certificates)
    if client_certificates:
        # The mutualTLS scheme exists only in OpenAPI 3.1, whose schemas are JSON
        # Schema 2020-12: `nullable` becomes a "null" type. Without -cas the
        # document stays 3.0 for the tools that read only that.
        document = _as_openapi_3_1(document)
    return document


BASIC_AUTH = {
    "type": "http",
    "scheme": "basic",
    "description": "a user of the -pw htpasswd file; every request but GET /health needs it",
}
MUTUAL_TLS = {
    "type": "mutualTLS",
    "description": "on the HTTPS port (-sp) a client certificate signed by a -cas CA is "
    "required by the TLS handshake (a plain -p port, if any, asks for none)",
}


def _add_security(document: dict[str, Any], basic_auth: bool, client_certificates: bool) -> None:
    """Declare the schemes in force and require them globally. GET /health stays
    open to load balancers: it needs no password (only the certificate, if any)."""
    schemes = {}
    if basic_auth:
        schemes["basicAuth"] = BASIC_AUTH
    if client_certificates:
        schemes["mutualTLS"] = MUTUAL_TLS
    if not schemes:
        return
    document["components"]["securitySchemes"] = schemes
    document["security"] = [{name: [] for name in schemes}]
    health = document["paths"]["/health"]["get"]
    health["security"] = [{"mutualTLS": []}] if client_certificates else []


def _as_openapi_3_1(document: dict[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = _without_nullable(document)
    converted["openapi"] = "3.1.0"
    return converted


def _without_nullable(value: Any) -> Any:
    """A copy of `value` with every `"nullable": true` schema turned into one
    that also has type "null" (module-level schemas are shared: never mutated)."""
    if isinstance(value, list):
        return [_without_nullable(item) for item in value]
    if not isinstance(value, dict):
        return value
    nullable = value.get("nullable")
    converted = {
        key: _without_nullable(item)
        for key, item in value.items()
        if not (key == "nullable" and isinstance(item, bool))
    }
    if nullable is True and "type" in converted:
        converted["type"] = [converted["type"], "null"]
    return converted
