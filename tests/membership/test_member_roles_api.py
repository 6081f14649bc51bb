"""Member roles through the API on real processes: read-only members (POST with
role=learner) stay learners, across restarts too; PUT /cluster/members/{id}
changes a role; bad input answers 400/404/409/415 with a JSON error naming the
problem. (Outages, promotion and demotion in a larger cluster: tests/cluster.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.cluster import ClusterNode, free_port
from tests.support.server import Response, wait_until

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[ClusterNode]:
    node = ClusterNode("solo", tmp_path / "solo", free_port()).start()
    try:
        yield node
    finally:
        node.kill()


def put_role(node: ClusterNode, member: str, role: Any, as_json: bool = False) -> Response:
    path = f"/cluster/members/{member}"
    if as_json:
        return node.request("PUT", path, orjson.dumps({"role": role}), JSON)
    return node.form("PUT", path, {"role": role})


def error_of(answer: Response, status: int) -> str:
    assert answer.status == status, (answer.status, answer.body)
    message = answer.json()["error"]
    assert isinstance(message, str)
    return message


def test_bad_roles_and_members_are_refused_with_json_errors(standalone: ClusterNode) -> None:
    own = standalone.node_id()
    assert "not a member" in error_of(put_role(standalone, own, "learner"), 404)
    founding = {"address": standalone.address, "role": "learner"}
    assert "voter" in error_of(standalone.form("POST", "/cluster/members", founding), 400)
    unknown = {"address": standalone.address, "role": "admin"}
    message = error_of(standalone.form("POST", "/cluster/members", unknown), 400)
    assert "role must be voter or learner" in message and "admin" in message
    assert standalone.state() == "Standalone"

    formed = standalone.form("POST", "/cluster/members", {"address": standalone.address})
    assert formed.status == 200
    assert formed.json()["quorum"] == 1 and formed.json()["readOnly"] == []
    assert "admin" in error_of(put_role(standalone, own, "admin"), 400)
    assert "role" in error_of(put_role(standalone, own, 7, as_json=True), 400)
    assert "nothing" in error_of(
        standalone.request("PUT", f"/cluster/members/{own}", "{}", JSON), 400
    )
    assert "JSON object" in error_of(
        standalone.request("PUT", f"/cluster/members/{own}", "[]", JSON), 400
    )
    assert "not valid JSON" in error_of(
        standalone.request("PUT", f"/cluster/members/{own}", "{", JSON), 400
    )
    text = standalone.request(
        "PUT", f"/cluster/members/{own}", "role=voter", {"Content-Type": "text/plain"}
    )
    assert "role=voter" in error_of(text, 415)
    assert "base-36" in error_of(put_role(standalone, "not-base36", "voter"), 400)
    assert "not a member" in error_of(put_role(standalone, "zzz", "voter"), 404)
    assert "last voter" in error_of(put_role(standalone, own, "learner"), 409)
    # The role it has already: nothing to do.
    same = put_role(standalone, own, "voter", as_json=True)
    assert same.status == 200, same.body
    assert same.json()["roles"] == {own: "voter"}
    assert standalone.state() == "Leader"


def test_a_read_only_member_stays_a_learner_and_its_role_survives_restarts(
    tmp_path: Path, standalone: ClusterNode
) -> None:
    formed = standalone.form("POST", "/cluster/members", {"address": standalone.address})
    assert formed.status == 200, formed.body
    reader = ClusterNode("reader", tmp_path / "reader", free_port()).start()
    try:
        founder_id, reader_id = standalone.node_id(), reader.node_id()
        added = standalone.request(
            "POST",
            "/cluster/members",
            orjson.dumps({"address": reader.address, "role": "learner"}),
            JSON,
            timeout_s=60,
        )
        assert added.status == 200, added.body
        document = added.json()
        assert document["roles"] == {founder_id: "voter", reader_id: "learner"}
        assert document["readOnly"] == [reader_id] and document["quorum"] == 1

        def caught_up() -> bool:
            peer = standalone.raft()["peers"].get(reader_id)
            return peer is not None and peer["state"] == "replicate"

        for round_number in range(2):
            # Caught up and streaming: a member that joins to vote is promoted now.
            wait_until(caught_up, 30, 0.05)
            for number in range(10):  # forwarded to the leader
                written = reader.post_change({"data": {"round": round_number, "n": number}})
                assert written.status == 200, written.body
            wait_until(lambda: reader.raft()["appliedIndex"] >= standalone.raft()["committedIndex"])
            for node in (standalone, reader):
                status = node.raft()
                assert status["voters"] == [founder_id] and status["learners"] == [reader_id]
                assert status["roles"] == {founder_id: "voter", reader_id: "learner"}
                assert status["readOnly"] == [reader_id] and status["quorum"] == 1
            assert reader.state() == "Learner"
            assert (
                reader.get_changes().json()["changes"] == standalone.get_changes().json()["changes"]
            )
            # The same request again is done already; as a voter it conflicts.
            again = {"address": reader.address, "role": "learner"}
            assert standalone.form("POST", "/cluster/members", again).status == 200
            as_voter = standalone.form("POST", "/cluster/members", {"address": reader.address})
            assert "role=voter promotes it" in error_of(as_voter, 409)
            if round_number == 0:
                # Recovery rebuilds the role from the log on both nodes.
                assert reader.stop() == 0 and standalone.stop() == 0
                standalone.start()
                reader.start()
                wait_until(lambda: standalone.state() == "Leader", 30, 0.05)
    finally:
        reader.kill()
