"""GET /ui/: the dashboard's static files over HTTP (the page itself runs in
tests/ui/test_dashboard.py, in a real browser)."""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from changeagent.api.ui import UI_FILES, ui_files
from tests.security.support import basic, htpasswd
from tests.support.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]

MakeServer = Callable[..., ServerProcess]


def test_the_page_and_its_files_have_their_content_types_and_headers(
    server: ServerProcess,
) -> None:
    page = server.request("GET", "/ui/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script src="app.js" defer></script>' in page.body
    for name, content_type in UI_FILES.items():
        answer = server.request("GET", f"/ui/{name}")
        assert answer.status == 200, name
        assert answer.headers["Content-Type"] == content_type
        assert answer.body == ui_files()[name].body
        assert answer.headers["Cache-Control"] == "no-cache"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        policy = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_an_unchanged_file_is_answered_304(server: ServerProcess) -> None:
    first = server.request("GET", "/ui/app.js")
    etag = first.headers["ETag"]
    again = server.request("GET", "/ui/app.js", headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    assert again.headers["ETag"] == etag
    other = server.request("GET", "/ui/app.js", headers={"If-None-Match": '"other"'})
    assert other.status == 200 and other.body == first.body


def test_ui_redirects_relatively_to_ui_slash(server: ServerProcess) -> None:
    answer = server.request("GET", "/ui")
    assert answer.status == 302
    assert answer.headers["Location"] == "ui/"  # also right behind a prefix-moving proxy


@pytest.mark.parametrize(
    "path",
    [
        "/ui/unknown.js",
        "/ui/../config",
        "/ui/..%2Fconfig",
        "/ui/%2E%2E/%2E%2E/pyproject.toml",
        "/ui/..%2F..%2F..%2Fetc%2Fpasswd",
        "/ui/ui.py",
        "/ui/app.js/",
    ],
)
def test_only_the_named_files_are_served(server: ServerProcess, path: str) -> None:
    answer = server.request("GET", path)
    assert answer.status == 404, (path, answer.status, answer.body[:200])
    assert answer.headers["Content-Type"] == "application/json"


def test_root_links_to_the_dashboard(server: ServerProcess) -> None:
    links = server.request("GET", "/").json()
    assert links["ui"] == f"http://127.0.0.1:{server.port}/ui/"


def test_the_dashboard_is_under_the_prefix(make_server: MakeServer) -> None:
    server = make_server("-P", "/ca")
    assert server.request("GET", "/ca/ui/").status == 200
    assert server.request("GET", "/ca/ui/style.css").status == 200
    assert server.request("GET", "/ca/ui").headers["Location"] == "ui/"
    assert server.request("GET", "/ui/").status == 404


def test_the_dashboard_needs_credentials(make_server: MakeServer, tmp_path: Path) -> None:
    passwords = tmp_path / "htpasswd"
    htpasswd(passwords, "alice", "secret", "-B")
    server = make_server("-pw", str(passwords), "--public-reads")
    for path in ("/ui", "/ui/", "/ui/app.js"):
        assert server.request("GET", path).status == 401, path
    assert server.request("GET", "/ui/", headers=basic("alice", "secret")).status == 200


def test_the_files_are_package_data() -> None:
    """An installed package (a wheel, not this checkout) must carry every file."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["changeagent.api"]
    for name in UI_FILES:
        assert any(fnmatch.fnmatch(f"ui/{name}", pattern) for pattern in patterns), name


@pytest.mark.parametrize("site", ["cross-site", "same-site", "CROSS-SITE"])
def test_a_browsers_write_from_another_site_is_refused(server: ServerProcess, site: str) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = server.request("POST", "/health", "up=false", {**form, "Sec-Fetch-Site": site})
    assert answer.status == 403, answer.body
    assert "another site" in answer.json()["error"]
    assert server.request("GET", "/health").status == 200  # still up
    change = {"Content-Type": "application/json", "Sec-Fetch-Site": site}
    assert server.request("POST", "/changes", '{"data": 1}', change).status == 403
    # Reads are not refused: another site's page cannot read the answer anyway.
    read = server.request("GET", "/changes", headers={"Sec-Fetch-Site": site})
    assert read.status == 200


@pytest.mark.parametrize("site", ["same-origin", "none", None])
def test_writes_from_the_same_origin_or_no_browser_are_served(
    server: ServerProcess, site: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if site is not None:
        headers["Sec-Fetch-Site"] = site
    assert server.request("POST", "/changes", '{"data": 1}', headers).status == 200
