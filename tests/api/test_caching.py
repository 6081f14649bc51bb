"""HTTP caching of GET /changes: full pages immutable, partial pages revalidated with
an ETag (304 while nothing new matches), long-polls never stored."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from changeagent.api.caching import PageCaching, matches, page_etag
from changeagent.node.query import PageResult
from tests.security.support import basic, htpasswd
from tests.support.server import ServerProcess

IMMUTABLE = "public, max-age=86400, immutable"


def change(index: int) -> bytes:
    return b'{"_id":%d,"_ts":1,"data":null}' % index


def test_the_etag_follows_what_decides_the_bytes() -> None:
    page = PageResult([change(7), change(12)], at_start=False, at_end=True, first_retained=1,
                      missed=False)  # fmt: skip
    assert page_etag(page) == '"12-2-2"'
    gap = PageResult([change(12)], at_start=True, at_end=False, first_retained=12, missed=True)
    assert page_etag(gap) == '"12-1-1-m12"'
    empty = PageResult([], at_start=True, at_end=True, first_retained=1, missed=False)
    assert page_etag(empty) == '"0-0-3"'


def test_if_none_match_lists_and_weak_forms_match() -> None:
    assert matches('"a", "12-2-2"', '"12-2-2"')
    assert matches('W/"12-2-2"', '"12-2-2"') and matches("*", '"x"')
    assert not matches('"12-2-3"', '"12-2-2"') and not matches(None, '"x"')


def test_only_full_pages_are_immutable_and_private_when_not_shared() -> None:
    full = PageResult([change(1), change(2)], True, False, 1, False)
    assert PageCaching().cache_control(full, 2) == IMMUTABLE
    assert PageCaching(60, shared=False).cache_control(full, 2) == "private, max-age=60, immutable"
    assert PageCaching().cache_control(full, 3) == "no-cache"


def test_a_full_page_is_immutable_and_revalidates_to_304(server: ServerProcess) -> None:
    tag = uuid.uuid4().hex
    first = [server.post_change({"data": n, "tags": [tag]}).json()["_id"] for n in range(3)]
    path = f"/changes?since={first[0] - 1}&limit=2&tag={tag}"
    answer = server.request("GET", path)
    assert answer.status == 200 and answer.headers["Cache-Control"] == IMMUTABLE
    etag = answer.headers["ETag"]
    again = server.request("GET", path, headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    assert again.headers["ETag"] == etag and again.headers["Cache-Control"] == IMMUTABLE


def test_a_partial_page_is_304_until_a_matching_change_commits(server: ServerProcess) -> None:
    tag = uuid.uuid4().hex
    start = server.post_change({"data": 0, "tags": [tag]}).json()["_id"]
    path = f"/changes?since={start - 1}&tag={tag}"
    answer = server.request("GET", path)
    assert answer.status == 200 and answer.headers["Cache-Control"] == "no-cache"
    etag = answer.headers["ETag"]
    server.post_change({"data": "other", "tags": ["unrelated"]})
    unchanged = server.request("GET", path, headers={"If-None-Match": etag})
    assert unchanged.status == 304 and unchanged.headers["Cache-Control"] == "no-cache"
    server.post_change({"data": 1, "tags": [tag]})
    grown = server.request("GET", path, headers={"If-None-Match": etag})
    assert grown.status == 200 and grown.headers["ETag"] != etag
    assert len(grown.json()["changes"]) == 2


@pytest.mark.parametrize("block", ["1", "0.5"])
def test_long_polls_are_never_stored(server: ServerProcess, block: str) -> None:
    last = server.post_change({"data": 0}).json()["_id"]
    answered_at_once = server.request("GET", f"/changes?since={last - 1}&block={block}")
    assert answered_at_once.headers["Cache-Control"] == "no-store"
    assert "ETag" not in answered_at_once.headers
    timed_out = server.request("GET", f"/changes?since={last + 10}&block={block}")
    assert timed_out.json()["changes"] == [] and timed_out.headers["Cache-Control"] == "no-store"


def test_with_passwords_pages_are_private_unless_reads_are_public(
    make_server: Any, tmp_path: Path
) -> None:
    passwords = tmp_path / "htpasswd"
    htpasswd(passwords, "alice", "secret", "-B")
    alice = basic("alice", "secret")
    private = make_server("-pw", str(passwords), data_dir=tmp_path / "private")
    first = private.post_change({"data": 1}, headers=alice).json()["_id"]
    answer = private.request("GET", f"/changes?since={first - 1}&limit=1", headers=alice)
    assert answer.headers["Cache-Control"] == "private, max-age=86400, immutable"
    assert private.request("GET", "/changes").status == 401

    public = make_server("-pw", str(passwords), "--public-reads", "--page-cache-max-age", "60",
                         data_dir=tmp_path / "public")  # fmt: skip
    assert public.post_change({"data": 1}).status == 401  # writes still need credentials
    first = public.post_change({"data": 1}, headers=alice).json()["_id"]
    answer = public.request("GET", f"/changes?since={first - 1}&limit=1")
    assert answer.status == 200 and answer.headers["Cache-Control"] == (
        "public, max-age=60, immutable"
    )
    assert public.request("GET", f"/changes/{first}").status == 200
    assert public.request("GET", "/config").status == 401
