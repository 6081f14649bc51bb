"""Basic auth on a real node (-pw), with password files made by Apache's htpasswd.

Every operation of the served OpenAPI document is tried with no, wrong and right
credentials; only GET /health (and the peer channel) are open without them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from changeagent.transport import CLUSTER_PATH
from tests.security.conftest import StartNode
from tests.security.support import Node, basic, htpasswd, htpasswd_delete
from tests.support.server import Response, wait_until

PASSWORD = "correct horse battery staple"
WRONG = "Tr0ub4dor&3"
CHALLENGE = 'Basic realm="changeagent"'
# Reload within 5 s of a change (the poll period), plus margin for a loaded machine.
RELOAD_DEADLINE_S = 6.0

# A harmless body for each operation that takes one; the answer only needs to be "not 401".
BODIES: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/changes"): ('{"data":{"hello":"world"}}', "application/json"),
    ("PUT", "/config"): ("minPurgeRecords: 0\n", "application/yaml"),
    ("PUT", "/health"): ("up=true", "application/x-www-form-urlencoded"),
    ("POST", "/health"): ("up=true", "application/x-www-form-urlencoded"),
    ("POST", "/cluster/members"): ("address=127.0.0.1:1", "application/x-www-form-urlencoded"),
}


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    htpasswd(path, "alice", PASSWORD, "-B")
    htpasswd(path, "md5user", PASSWORD, "-m")
    htpasswd(path, "shauser", PASSWORD, "-s")
    return path


def operations(node: Node) -> list[tuple[str, str]]:
    """(method, path) of every operation in the node's own OpenAPI document."""
    document = node.request("GET", "/openapi.json", headers=basic("alice", PASSWORD)).json()
    found = []
    for template, item in document["paths"].items():
        path = template.replace("{id}", "2").replace("{name}", "app.js")
        assert "{" not in path, f"unexpected path parameter in {template}"
        for method in item:
            if method in ("get", "put", "post", "delete", "patch"):
                found.append((method.upper(), path))
    assert len(found) >= 20
    return found


def call(node: Node, method: str, path: str, credentials: dict[str, str]) -> Response:
    body, content_type = BODIES.get((method, path), (None, None))
    headers = dict(credentials)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return node.request(method, path, body, headers)


def assert_refused(answer: Response, what: str) -> None:
    assert answer.status == 401, what
    assert answer.headers["WWW-Authenticate"] == CHALLENGE, what
    assert answer.headers["Content-Type"].startswith("application/json"), what
    assert set(answer.json()) == {"error"}, what


def test_every_operation_needs_credentials_except_get_health(
    start_node: StartNode, passwd: Path
) -> None:
    node = start_node("-pw", str(passwd))
    attempts = {
        "none": {},
        "wrong password": basic("alice", WRONG),
        "unknown user": basic("mallory", PASSWORD),
        "md5 entry": basic("md5user", PASSWORD),
        "sha entry": basic("shauser", PASSWORD),
    }
    for method, path in operations(node):
        for name, credentials in attempts.items():
            answer = call(node, method, path, credentials)
            if (method, path) == ("GET", "/health"):
                assert answer.status == 200, name
            else:
                assert_refused(answer, f"{method} {path} with {name}")
        right = call(node, method, path, basic("alice", PASSWORD))
        assert right.status != 401, f"{method} {path}: {right.status} {right.body[:200]!r}"
    assert call(node, "GET", "/no/such/path", {}).status == 401  # no route disclosure
    log = node.log_text()
    assert PASSWORD not in log and WRONG not in log
    assert log.count("'md5user' has a non-bcrypt entry") == 1
    assert log.count("'shauser' has a non-bcrypt entry") == 1


def test_openapi_declares_basic_auth(start_node: StartNode, passwd: Path) -> None:
    """Required everywhere but on GET /health, as the server enforces it."""
    node = start_node("-pw", str(passwd))
    document = node.request("GET", "/openapi.json", headers=basic("alice", PASSWORD)).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes == {"basicAuth": {**schemes["basicAuth"], "type": "http", "scheme": "basic"}}
    assert document["security"] == [{"basicAuth": []}]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert "security" not in document["paths"]["/changes"]["get"]
    assert document["openapi"] == "3.0.3"


def test_prefix_health_and_peer_channel_stay_open(start_node: StartNode, passwd: Path) -> None:
    node = start_node("-pw", str(passwd), "-P", "/ca")
    assert node.request("GET", "/ca/health").status == 200
    assert_refused(node.request("GET", "/ca/changes"), "GET /ca/changes")
    assert_refused(node.request("PUT", "/ca/health", "up=false"), "PUT /ca/health")
    # The peer channel authenticates members with its own handshake: never a 401 there,
    # whether it is mounted under the prefix or not.
    for path in (CLUSTER_PATH, "/ca" + CLUSTER_PATH):
        assert node.request("GET", path).status != 401, path
    answer = node.request("GET", "/ca/changes", headers=basic("alice", PASSWORD))
    assert answer.status == 200


def status_for(node: Node, user: str, password: str) -> int:
    return node.request("GET", "/changes", headers=basic(user, password)).status


def test_users_added_removed_and_changed_while_running(start_node: StartNode, passwd: Path) -> None:
    node = start_node("-pw", str(passwd))
    assert status_for(node, "alice", PASSWORD) == 200  # cached from here on
    assert status_for(node, "bob", "bob-password") == 401

    changed_at = time.monotonic()
    htpasswd(passwd, "bob", "bob-password", "-B")
    wait_until(lambda: status_for(node, "bob", "bob-password") == 200, RELOAD_DEADLINE_S, 0.1)
    assert time.monotonic() - changed_at <= RELOAD_DEADLINE_S

    changed_at = time.monotonic()
    htpasswd_delete(passwd, "alice")
    wait_until(lambda: status_for(node, "alice", PASSWORD) == 401, RELOAD_DEADLINE_S, 0.1)
    assert time.monotonic() - changed_at <= RELOAD_DEADLINE_S

    htpasswd(passwd, "bob", "new-bob-password", "-B")  # a cached password stops working
    wait_until(lambda: status_for(node, "bob", "bob-password") == 401, RELOAD_DEADLINE_S, 0.1)
    assert status_for(node, "bob", "new-bob-password") == 200
    log = node.log_text()
    assert "bob-password" not in log and PASSWORD not in log


def test_broken_file_keeps_previous_users(start_node: StartNode, passwd: Path) -> None:
    node = start_node("-pw", str(passwd))
    good = passwd.read_text()
    passwd.write_text(good + "this line is not an entry\n")
    wait_until(lambda: "keeping the previous" in node.log_text(), RELOAD_DEADLINE_S, 0.1)
    assert "line 4" in node.log_text()
    assert status_for(node, "alice", PASSWORD) == 200
    assert status_for(node, "alice", WRONG) == 401

    passwd.unlink()  # a missing file keeps them too
    wait_until(lambda: "cannot read it" in node.log_text(), RELOAD_DEADLINE_S, 0.1)
    assert status_for(node, "alice", PASSWORD) == 200

    passwd.write_text(good)
    htpasswd(passwd, "bob", "bob-password", "-B")  # fixed: reloaded again
    wait_until(lambda: status_for(node, "bob", "bob-password") == 200, RELOAD_DEADLINE_S, 0.1)
