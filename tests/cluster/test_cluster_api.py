"""What clients see of a cluster when a node has no leader or no quorum, and when
they write through a follower (real processes behind the LinkProxy):

- a node that knows no leader answers writes, settings, membership calls and
  linearizable reads with 503, `Retry-After` and a JSON error, while local reads
  go on; every node names the same leader in its diagnostics;
- `consistency=linearizable` is refused (503) by a leader cut off from its
  quorum, never answered from its stale copy;
- a write sent to a follower is answered only once that follower has applied it
  (the leader's link to it is delayed, so its copy lags the commit);
- writes pipelined on one connection to a follower are answered once each, in
  order (the follower may write an answer from its apply step).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from tests.cluster.harness import COMMIT_TIMEOUT_S, all_changes, post, proxied_cluster
from tests.support.cluster import ClusterNode
from tests.support.server import Response, read_response, wait_until

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
YAML = {"Content-Type": "application/yaml"}


def text(node: ClusterNode, path: str) -> str:
    return node.request("GET", path, timeout_s=5).text


def header(answer: Response, name: str) -> str | None:
    for key, value in answer.headers.items():
        if key.lower() == name.lower():
            return value
    return None


def assert_unavailable(answer: Response, what: str) -> None:
    """503 with a positive integer Retry-After and a JSON {"error": "..."} body."""
    assert answer.status == 503, (what, answer.status, answer.body)
    retry = header(answer, "Retry-After")
    assert retry is not None and retry.isdigit() and int(retry) >= 1, (what, answer.headers)
    assert (header(answer, "Content-Type") or "").startswith("application/json"), what
    document = orjson.loads(answer.body)
    assert isinstance(document, dict) and isinstance(document.get("error"), str), document
    assert document["error"], what


def test_no_known_leader_answers_503_with_retry_after_and_a_json_error(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        leader_id = leader.node_id()
        # Diagnostics: every node names the same leader, and its own id.
        for node in cluster.nodes:
            wait_until(
                lambda node=node: text(node, "/diagnostics/raft/leader") == leader_id, 10, 0.05
            )
            status = cluster.raft(node)
            assert status is not None
            assert text(node, "/diagnostics/id") == status["id"]
            assert status["leader"] == leader_id
        follower = next(node for node in cluster.nodes if node is not leader)
        before = post(follower, {"data": "before the cut"})
        assert before.ok, before
        cluster.wait_converged()

        cluster.proxy.isolate(follower.name, cluster.names)
        wait_until(lambda: text(follower, "/diagnostics/raft/leader") == "0", 20, 0.05)
        assert cluster.state(follower) == "Candidate"
        member_address = cluster.addresses[leader.name]
        attempts: list[tuple[str, str, str, bytes | str | None, dict[str, str]]] = [
            (
                "write",
                "POST",
                "/changes",
                orjson.dumps({"data": "no leader"}),
                {"Content-Type": "application/json"},
            ),
            (
                "keyed write",
                "POST",
                "/changes",
                orjson.dumps({"data": "no leader"}),
                {"Content-Type": "application/json", "Idempotency-Key": "k1"},
            ),
            ("settings", "PUT", "/config", "minPurgeRecords: 3\n", YAML),
            ("add member", "POST", "/cluster/members", f"address={member_address}", FORM),
            ("remove member", "DELETE", f"/cluster/members/{leader_id}", None, {}),
            ("linearizable list", "GET", "/changes?consistency=linearizable", None, {}),
            (
                "linearizable change",
                "GET",
                f"/changes/{before.body['_id']}?consistency=linearizable",
                None,
                {},
            ),
        ]
        timings = {}
        for what, method, path, body, headers in attempts:
            started = time.monotonic()
            answer = follower.request(method, path, body, headers, timeout_s=30)
            timings[what] = time.monotonic() - started
            assert_unavailable(answer, what)
        print(
            "\nno leader: "
            + ", ".join(f"{what} 503 in {seconds:.2f} s" for what, seconds in timings.items())
        )
        # No leader known is said at once, not after waiting out the commit timeout.
        for what in ("write", "keyed write", "settings", "add member", "remove member"):
            assert timings[what] < COMMIT_TIMEOUT_S, timings
        # Local reads go on from the node's own copy.
        local = follower.request("GET", "/changes")
        assert local.status == 200
        assert [change["data"] for change in local.json()["changes"]] == ["before the cut"]

        cluster.proxy.heal()
        wait_until(lambda: text(follower, "/diagnostics/raft/leader") != "0", 20, 0.05)
        after = post(follower, {"data": "after healing"})
        assert after.ok, after
        cluster.wait_converged()
        reference = cluster.assert_same_lists()
        # Nothing refused above was stored, and the settings and members are unchanged.
        assert [change["data"] for change in reference] == ["before the cut", "after healing"]
        assert len(leader.request("GET", "/cluster/members").json()) == 3
        assert "minPurgeRecords: 0" in follower.request("GET", "/config").text


def test_linearizable_reads_need_a_quorum(tmp_path: Path) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        old = cluster.leader()
        first = post(old, {"data": "first"})
        assert first.ok, first
        cluster.wait_converged()
        cluster.proxy.isolate(old.name, cluster.names)
        # The cut-off leader may still believe it leads: it must not answer from its copy.
        answer = old.request("GET", "/changes?consistency=linearizable", timeout_s=30)
        assert_unavailable(answer, "linearizable read on the cut-off leader")
        majority = [node for node in cluster.nodes if node is not old]
        new = cluster.leader(among=majority)
        second = post(new, {"data": "second"})
        assert second.ok, second
        for node in majority:
            fresh = node.request("GET", "/changes?consistency=linearizable", timeout_s=30)
            assert fresh.status == 200, (node.name, fresh.status, fresh.body)
            assert [c["data"] for c in fresh.json()["changes"]] == ["first", "second"]
        for path in (
            "/changes?consistency=linearizable",
            f"/changes/{first.body['_id']}?consistency=linearizable",
            f"/changes?since={first.body['_id']}&consistency=linearizable",
        ):
            stale = old.request("GET", path, timeout_s=30)
            assert_unavailable(stale, f"GET {path} on the cut-off old leader")
        # A local read may be stale; that is what `local` means.
        local = old.request("GET", "/changes").json()["changes"]
        assert [change["data"] for change in local] == ["first"]
        cluster.proxy.heal()

        def sees_second() -> bool:
            answer = old.request("GET", "/changes?consistency=linearizable", timeout_s=30)
            return answer.status == 200 and [
                change["data"] for change in answer.json()["changes"]
            ] == ["first", "second"]

        wait_until(sees_second, 30, 0.1)


def test_a_write_through_a_follower_is_answered_once_that_follower_applied_it(
    tmp_path: Path,
) -> None:
    with proxied_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        follower, other = (node for node in cluster.nodes if node is not leader)
        # Everything the leader sends the follower (entries, commit index, the answer
        # to the forwarded write) arrives 300 ms late; the other follower is prompt,
        # so the leader commits without the receiving follower.
        cluster.proxy.delay(leader.name, follower.name, 300)
        problems: list[str] = []
        latencies: list[float] = []
        written: list[dict[str, Any]] = []
        lock = threading.Lock()

        def client(number: int) -> None:
            for round_number in range(5):
                started = time.monotonic()
                outcome = post(follower, {"data": {"client": number, "round": round_number}})
                elapsed = time.monotonic() - started
                if not outcome.ok:
                    problems.append(f"write failed: {outcome}")
                    return
                change = outcome.body
                # Read back at once from the same follower, both ways.
                one = follower.request("GET", f"/changes/{change['_id']}", timeout_s=10)
                page = follower.request(
                    "GET", f"/changes?since={change['_id'] - 1}&limit=1", timeout_s=10
                )
                status = cluster.raft(follower)
                with lock:
                    latencies.append(elapsed)
                    written.append(change)
                    if one.status != 200 or one.json() != change:
                        problems.append(f"GET /changes/{change['_id']}: {one.status} {one.body!r}")
                    if page.status != 200 or page.json()["changes"][:1] != [change]:
                        problems.append(f"page after {change['_id'] - 1}: {page.body!r}")
                    if status is None or status["appliedIndex"] < change["_id"]:
                        problems.append(f"applied index {status} below {change['_id']}")

        clients = [threading.Thread(target=client, args=(number,)) for number in range(6)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(120)
        assert not any(thread.is_alive() for thread in clients)
        assert not problems, problems[:5]
        assert len(written) == 30
        latencies.sort()
        print(f"\nwrites through a delayed follower: median {latencies[15]:.2f} s")
        assert latencies[0] >= 0.3  # the delay was in force for every write
        cluster.proxy.heal()
        cluster.wait_converged()
        stored = {change["_id"]: change for change in cluster.assert_same_lists()}
        assert all(stored[change["_id"]] == change for change in written)
        assert len(all_changes(other)) == 30


def test_pipelined_writes_through_a_follower_are_each_answered_once_in_order(
    tmp_path: Path,
) -> None:
    # The follower writes a forwarded write's answer from the apply step that reaches
    # its index (`AppliedIndex.watch`, registered as the leader's answer is read) and
    # aiohttp only finishes its bookkeeping: a second copy, or an answer out of
    # order, would show up here.
    count = 20
    requests = b"".join(
        b"POST /changes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        for body in (b'{"data":%d}' % n for n in range(count))
    )
    with proxied_cluster(tmp_path, 3) as cluster:
        leader = cluster.leader()
        follower = next(node for node in cluster.nodes if node is not leader)
        with socket.create_connection(("127.0.0.1", follower.port), timeout=30) as connection:
            connection.sendall(requests)
            answers, rest = [], b""
            for _ in range(count):
                head, body, rest = read_response(connection, rest)
                assert head.startswith(b"HTTP/1.1 200 OK"), head
                answers.append(orjson.loads(body))
            assert rest == b""
            first = answers[0]["_id"]
            connection.sendall(b"GET /changes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % first)
            head, body, rest = read_response(connection, rest)
            assert head.startswith(b"HTTP/1.1 200 OK") and orjson.loads(body) == answers[0]
            assert rest == b""
        assert [answer["data"] for answer in answers] == list(range(count))
        ids = [answer["_id"] for answer in answers]
        assert ids == sorted(set(ids)), ids
        cluster.wait_converged()
        stored = {change["_id"]: change for change in cluster.assert_same_lists()}
        assert all(stored[answer["_id"]] == answer for answer in answers)
