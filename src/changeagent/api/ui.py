"""The dashboard: GET /ui/ serves one page, shipped as static files in this package.

The page (`api/ui/`: index.html, app.js, style.css) is plain HTML, CSS and
JavaScript with no build step and no third-party code. It reads the API it is
served with (`/cluster`, `/diagnostics/raft`, `/health`, `/config`, the SSE feed
of `GET /changes`) through relative URLs, so it works under `-P` and behind a
proxy that moves the prefix; with `-pw` the browser's Basic credentials for the
page cover its requests, which are all same-origin.

Only the files named in `UI_FILES` are served, read once from the package: a
request names a file by its key, so no path ever reaches the file system and no
directory traversal is possible. Each answer carries a strong ETag (a hash of the
bytes) with `Cache-Control: no-cache`: browsers keep the files but ask each time,
and get a 304 until an upgrade changes them (the names carry no version, so a
long max-age would serve stale code after an upgrade). A Content-Security-Policy
allows only this origin's scripts, styles and connections and no framing.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from changeagent.api.caching import NO_CACHE, matches
from changeagent.api.errors import ApiError

UI_PATH = "/ui"
INDEX = "index.html"
UI_FILES = {
    INDEX: "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


@functools.cache
def ui_files() -> dict[str, StaticFile]:
    """The dashboard's files, read from the installed package once per process."""
    folder = resources.files("changeagent.api").joinpath("ui")
    files = {}
    for name, content_type in UI_FILES.items():
        body = folder.joinpath(name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[name] = StaticFile(body, content_type, etag)
    return files


def add_ui_routes(app: web.Application, prefix: str) -> None:
    """GET {prefix}/ui (a redirect), {prefix}/ui/ (the page) and {prefix}/ui/{name}."""
    files = ui_files()

    async def redirect(request: web.Request) -> web.StreamResponse:
        # Relative, so that it also holds behind a proxy that rewrites the prefix.
        raise web.HTTPFound("ui/", headers={"Cache-Control": NO_CACHE})

    async def page(request: web.Request) -> web.StreamResponse:
        return _answer(request, files[INDEX])

    async def named(request: web.Request) -> web.StreamResponse:
        found = files.get(request.match_info["name"])
        if found is None:
            raise ApiError(404, "no such dashboard file")
        return _answer(request, found)

    app.router.add_route("GET", prefix + UI_PATH, redirect)
    app.router.add_route("GET", prefix + UI_PATH + "/", page)
    app.router.add_route("GET", prefix + UI_PATH + "/{name}", named)


def _answer(request: web.Request, found: StaticFile) -> web.Response:
    headers = {"ETag": found.etag, "Cache-Control": NO_CACHE, **SECURITY_HEADERS}
    if matches(request.headers.get("If-None-Match"), found.etag):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = found.content_type
    return web.Response(body=found.body, headers=headers)
