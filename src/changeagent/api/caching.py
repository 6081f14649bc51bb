"""HTTP caching of GET /changes answers, so that ordinary HTTP caches (nginx, a CDN)
can serve most catch-up reads.

A committed change never changes, and changes only ever commit after the last one.
So a page that holds `limit` changes is the same answer forever: later commits come
after it and cannot enter it. Such a *full* page is `immutable` with a long max-age.
A page with fewer changes (the end of the log) grows when a matching change commits:
it carries an ETag with `no-cache`, and `If-None-Match` gets 304 while nothing new
matches. Long-polls are `no-store`: their answer depends on when they were asked.

The ETag is built from what decides the page's bytes for its URL: the last id in it,
how many changes it holds, atStart, atEnd, and the purge gap. A URL names the query,
and the changes between `since` and the last id that match it are fixed by the log,
so two answers for one URL with the same ETag are the same bytes, on every member.
Nothing needs hashing.

With `-pw`, cacheable answers are `private` (a shared cache must never give one
user's data to another) unless `--public-reads` made reads need no credentials.
"""

from __future__ import annotations

from dataclasses import dataclass

from changeagent.node.query import PageResult

PAGE_CACHE_MAX_AGE_S_DEFAULT = 86_400
NO_STORE = "no-store"
NO_CACHE = "no-cache"


@dataclass(frozen=True, slots=True)
class PageCaching:
    """How page answers may be cached: `max_age_s` for full pages; `shared` when a
    shared cache may keep them (no credentials, or reads public)."""

    max_age_s: int = PAGE_CACHE_MAX_AGE_S_DEFAULT
    shared: bool = True

    def cache_control(self, page: PageResult, limit: int) -> str:
        """For an answer given at once (no `block`)."""
        if len(page.bodies) < limit:
            return NO_CACHE
        scope = "public" if self.shared else "private"
        return f"{scope}, max-age={self.max_age_s}, immutable"


def page_etag(page: PageResult) -> str:
    """A strong ETag for this page's bytes under its URL (see the module's note)."""
    last = page.last_id()
    flags = (1 if page.at_start else 0) | (2 if page.at_end else 0)
    tag = f'"{last}-{len(page.bodies)}-{flags}'
    if page.missed:
        tag += f"-m{page.first_retained}"
    return tag + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether If-None-Match names this ETag (weak comparison, as RFC 9110 asks)."""
    if if_none_match is None:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False
