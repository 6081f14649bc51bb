"""POST/GET /changes against a real server process: every rule and every bad input."""

from __future__ import annotations

import socket

import orjson
import pytest

from tests.support.server import ServerProcess, read_response


def post_ok(server: ServerProcess, document: object, **headers: str) -> dict:
    response = server.post_change(document, headers)
    assert response.status == 200, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def test_first_change_on_fresh_node_is_id_2(server: ServerProcess) -> None:
    change = post_ok(server, {"data": {"Hello": "world"}})
    assert change["_id"] == 2
    assert change["data"] == {"Hello": "world"}
    assert isinstance(change["_ts"], int) and change["_ts"] > 1_600_000_000 * 10**9
    assert "tags" not in change and "type" not in change


def test_readme_walkthrough(server: ServerProcess) -> None:
    first = post_ok(server, {"data": {"Hello": "world"}})
    listing = server.get_changes().json()
    assert listing == {"changes": [first], "atStart": True, "atEnd": True}
    tagged = post_ok(
        server, {"tags": ["testTag", "testTag2"], "data": {"Hello": "world", "seq": 12}}
    )
    assert tagged["tags"] == ["testTag", "testTag2"]
    filtered = server.get_changes(limit=10, tag="testTag").json()
    assert [change["_id"] for change in filtered["changes"]] == [tagged["_id"]]
    assert server.request("GET", f"/changes/{first['_id']}").json() == first


def test_compat_bodies_stored_whole_as_data(server: ServerProcess) -> None:
    assert post_ok(server, {"hello": "world"})["data"] == {"hello": "world"}
    assert post_ok(server, "a string")["data"] == "a string"


def test_type_is_stored_and_filterable(server: ServerProcess) -> None:
    typed = post_ok(server, {"data": 1, "type": 7})
    post_ok(server, {"data": 2})
    assert typed["type"] == 7
    only = server.get_changes(type=7).json()["changes"]
    assert [change["_id"] for change in only] == [typed["_id"]]
    assert server.get_changes(type=0).json()["changes"][0]["data"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b'{"tags":["a"]}', '"data"'),
        (b'{"data":1,"tags":"a"}', "tags"),
        (b'{"data":1,"type":-3}', "type"),
        (b'{"data":1,"type":2.5}', "type"),
    ],
)
def test_bad_bodies_get_400_json(server: ServerProcess, body: bytes, message: str) -> None:
    response = server.request("POST", "/changes", body, {"Content-Type": "application/json"})
    assert response.status == 400
    assert message in response.json()["error"]


def test_wrong_content_type_is_415(server: ServerProcess) -> None:
    response = server.request("POST", "/changes", b'{"data":1}', {"Content-Type": "text/plain"})
    assert response.status == 415
    assert "application/json" in response.json()["error"]


def test_body_over_limit_is_413(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--max-body-bytes", "1000")
    response = server.post_change({"data": "x" * 2000})
    assert response.status == 413
    assert response.json()["error"] == "request body is too large (the limit is 1000 bytes)"
    assert server.post_change({"data": "x" * 100}).status == 200
    form = server.form("PUT", "/health", {"up": "true", "pad": "x" * 2000})
    assert (form.status, form.json()["error"]) == (413, response.json()["error"])


def test_too_many_form_fields_is_413_saying_so(server: ServerProcess) -> None:
    fields = {f"f{number}": "" for number in range(1001)}
    response = server.form("PUT", "/health", {"up": "true", **fields})
    assert response.status == 413
    assert response.json()["error"] == "too many form fields (the limit is 1000)"


def test_since_is_exclusive_and_limit_never_exceeded(server: ServerProcess) -> None:
    ids = [post_ok(server, {"data": n})["_id"] for n in range(10)]
    page = server.get_changes(since=ids[2], limit=3).json()
    assert [change["_id"] for change in page["changes"]] == ids[3:6]
    assert page["atStart"] is False and page["atEnd"] is False
    last = server.get_changes(since=ids[6], limit=3).json()
    assert [change["_id"] for change in last["changes"]] == ids[7:10]
    assert last["atEnd"] is True
    assert server.get_changes(since=ids[-1]).json() == {
        "changes": [],
        "atStart": False,
        "atEnd": True,
    }


def test_paging_through_everything(server: ServerProcess) -> None:
    ids = [post_ok(server, {"data": n})["_id"] for n in range(25)]
    seen: list[int] = []
    since = 0
    while True:
        page = server.get_changes(since=since, limit=7).json()
        assert len(page["changes"]) <= 7
        seen += [change["_id"] for change in page["changes"]]
        if page["atEnd"]:
            break
        since = page["changes"][-1]["_id"]
    assert seen == ids


def test_tags_are_ored(server: ServerProcess) -> None:
    a = post_ok(server, {"data": 1, "tags": ["a"]})["_id"]
    post_ok(server, {"data": 2, "tags": ["b"]})
    c = post_ok(server, {"data": 3, "tags": ["c", "a"]})["_id"]
    d = post_ok(server, {"data": 4, "tags": ["d"]})["_id"]
    got = server.get_changes(tag=["a", "d"]).json()["changes"]
    assert [change["_id"] for change in got] == [a, c, d]
    assert server.get_changes(tag="zzz").json() == {"changes": [], "atStart": True, "atEnd": True}


def test_at_start_reflects_matching_changes_at_or_below_since(server: ServerProcess) -> None:
    first = post_ok(server, {"data": 1, "tags": ["x"]})["_id"]
    second = post_ok(server, {"data": 2, "tags": ["y"]})["_id"]
    assert server.get_changes(since=second, tag="y").json()["atStart"] is False
    assert server.get_changes(since=first, tag="y").json()["atStart"] is True
    assert server.get_changes(since=first).json()["atStart"] is False


@pytest.mark.parametrize(
    ("parameters", "name"),
    [
        ({"since": "abc"}, "since"),
        ({"since": "-1"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "10001"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"block": "soon"}, "block"),
        ({"block": "-1"}, "block"),
        ({"block": "601"}, "block"),
        ({"block": "nan"}, "block"),
        ({"type": "x"}, "type"),
        ({"type": "-1"}, "type"),
    ],
)
def test_bad_query_parameters_name_the_parameter(
    server: ServerProcess, parameters: dict[str, str], name: str
) -> None:
    response = server.get_changes(**parameters)
    assert response.status == 400
    assert name in response.json()["error"]


def test_get_one_change_errors(server: ServerProcess) -> None:
    assert server.request("GET", "/changes/abc").json() == {"error": "Invalid ID"}
    assert server.request("GET", "/changes/abc").status == 400
    assert server.request("GET", "/changes/99999").status == 404
    assert server.request("GET", "/changes/99999").json() == {"error": "Not found"}
    # Index 1 is the node's internal no-op entry: not a change.
    assert server.request("GET", "/changes/1").status == 404
    assert server.request("GET", "/changes/99999999999999999999999").status == 400


def test_idempotency_key_returns_original(server: ServerProcess) -> None:
    first = post_ok(server, {"data": "once"}, **{"Idempotency-Key": "k-1"})
    again = post_ok(server, {"data": "twice"}, **{"Idempotency-Key": "k-1"})
    assert again == first
    other = post_ok(server, {"data": "other"}, **{"Idempotency-Key": "k-2"})
    assert other["_id"] != first["_id"]
    assert len(server.get_changes().json()["changes"]) == 2


def test_idempotency_key_too_long_is_400(server: ServerProcess) -> None:
    response = server.post_change({"data": 1}, {"Idempotency-Key": "k" * 257})
    assert response.status == 400
    assert "Idempotency-Key" in response.json()["error"]


def test_unknown_path_404_and_wrong_method_405_are_json(server: ServerProcess) -> None:
    missing = server.request("GET", "/nowhere")
    assert missing.status == 404 and "error" in missing.json()
    wrong = server.request("DELETE", "/changes")
    assert wrong.status == 405
    assert "GET" in wrong.headers["Allow"] and "POST" in wrong.headers["Allow"]
    assert "error" in wrong.json()


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_pipelined_writes_are_each_answered_once_in_order(
    server: ServerProcess, version: str
) -> None:
    # On a keep-alive HTTP/1.1 connection the answer is written by the Ready loop the
    # moment the change is applied (api/wire.py WriteDelivery) and aiohttp only
    # finishes its bookkeeping: a second copy of an answer, or one out of order,
    # would show up here as a wrong body or a stray response.
    count = 20
    requests = b"".join(
        b"POST /changes %s\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n%s"
        % (version.encode(), len(body), body)
        for body in (b'{"data":%d}' % n for n in range(count))
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(requests)
        answers, rest = [], b""
        for _ in range(count if version == "HTTP/1.1" else 1):
            head, body, rest = read_response(connection, rest)
            assert head.startswith(version.encode() + b" 200 OK"), head
            answers.append(orjson.loads(body))
        assert rest == b""
        if version == "HTTP/1.1":  # a stray copy of an answer would come before this one
            connection.sendall(b"GET /changes/2 HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body, rest = read_response(connection, rest)
            assert head.startswith(b"HTTP/1.1 200 OK") and orjson.loads(body)["_id"] == 2
            assert rest == b""
    assert [answer["data"] for answer in answers] == list(range(len(answers)))
    for answer in answers:
        stored = server.request("GET", f"/changes/{answer['_id']}").json()
        assert stored == answer
