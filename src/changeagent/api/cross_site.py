"""Refuse requests that change something when a browser sends them from another site.

The dashboard (`api/ui.py`) makes a browser a client of the API, and a browser
attaches its Basic credentials for an origin to every request made to it, also
to those another site's page makes: a hidden form there could POST `up=false`
to /health or an address to /cluster/members (form posts need no CORS
preflight). Browsers say where a request comes from in `Sec-Fetch-Site` (Chrome
76, Firefox 90, Safari 16.4 and later), judged by the browser, so proxies that
rewrite `Host` do not matter. A request with a method other than GET, HEAD or
OPTIONS whose `Sec-Fetch-Site` is present and is neither `same-origin` (the
dashboard's own requests) nor `none` (something the user typed) is answered
403. `same-site` is refused too: a site ignores the port, so another service on
the same host would count. Clients that are no browser (curl, the Python client,
members) send no such header and are not affected, nor are reads: another
site's page cannot read an answer from this origin.
"""

from __future__ import annotations

from aiohttp import web

from changeagent.api.errors import ApiError, Handler

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALLOWED_SITES = frozenset({"same-origin", "none"})


def same_site_only(handler: Handler) -> Handler:
    """`handler`, refusing a browser's request from another site (403). `build_app`
    wraps the handlers of the routes that change something, so reads pay nothing."""

    async def checked(request: web.Request) -> web.StreamResponse:
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() not in ALLOWED_SITES:
            raise ApiError(403, f"a browser sent this {request.method} from another site ({site})")
        return await handler(request)

    return checked
