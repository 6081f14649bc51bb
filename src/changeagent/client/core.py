"""The sans-I/O core shared by Client and AsyncClient: it builds requests, parses
answers, maps errors and decides retries, and does no I/O itself. A shell runs one
call like this:

    call = core.call(operation)
    while True:
        request = call.request()                 # method, url, params, headers, body
        outcome = send(request)                  # status/headers/body, or a failure text
        step = call.answered(...) or call.failed(text)
        if isinstance(step, Done): return step.value
        sleep(step.delay_s)                      # then the next server in turn

Retries (connection failures, timeouts, 503) move to the next configured server and
wait an exponential backoff with jitter, at least what `Retry-After` asks (capped).
A post always carries an Idempotency-Key, the same on every attempt, so the server
stores it once however many attempts reached it.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import orjson

from changeagent.client.errors import (
    ChangeAgentError,
    ChangesMissed,
    ConnectionFailed,
    ServerError,
    Unavailable,
    error_for,
)
from changeagent.client.model import Change, Health, Page

T = TypeVar("T")

RETRY_STATUSES = frozenset({503})
# A long poll's request timeout is its block time plus this, for the answer's trip.
LONG_POLL_MARGIN_S = 10.0
# follow(): how long a member that has nothing new is trusted before the others are
# asked whether it lags (and the longest long poll when several servers are given).
LAG_CHECK_S = 5.0
# A lag probe waits at most max(this, lag_check_s) for its answer.
PROBE_TIMEOUT_MIN_S = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. Invariants: attempts_max >= 1, delays >= 0.
    The default (8 attempts, 0.1 s doubling to at most 2 s) spans a few seconds, longer
    than a Raft election with the default timeouts."""

    attempts_max: int = 8
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 2.0
    retry_after_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError("attempts_max must be at least 1")
        if min(self.backoff_initial_s, self.backoff_max_s, self.retry_after_max_s) < 0:
            raise ValueError("retry delays must not be negative")

    def delay_s(self, retry: int, retry_after_s: float | None, rng: random.Random) -> float:
        """The wait before retry number `retry` (1-based): a backoff drawn from its
        upper half (jitter spreads clients apart), raised to Retry-After if larger."""
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** (retry - 1))
        delay = ceiling * rng.uniform(0.5, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.retry_after_max_s))
        return delay


@dataclass(frozen=True)
class Request:
    """One HTTP request for a shell to send."""

    method: str
    url: str
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class Operation(Generic[T]):
    """What to ask (relative to a server's base URL) and how to read a success."""

    method: str
    path: str
    parse: Callable[[int, bytes], T]
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    retry: bool = True
    server: str | None = None  # one server's base URL instead of the rotation
    timeout_s: float | None = None  # instead of the client's (a long poll waits longer)


@dataclass(frozen=True)
class Done(Generic[T]):
    value: T


@dataclass(frozen=True)
class Wait:
    delay_s: float


def error_message(body: bytes) -> str:
    """The server's JSON `error`, or the body's text when it is not such JSON."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace").strip()[:500]
    message = document.get("error") if isinstance(document, dict) else None
    if isinstance(message, str):
        return message
    return str(document)[:500]


def retry_after_s(headers: dict[str, str]) -> float | None:
    """Retry-After in seconds; None when absent or given as an HTTP date."""
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def parse_json(parse: Callable[[Any], T]) -> Callable[[int, bytes], T]:
    """A success parser that decodes JSON and hands it to `parse`."""

    def read(status: int, body: bytes) -> T:
        try:
            return parse(orjson.loads(body))
        except (orjson.JSONDecodeError, ValueError, TypeError) as error:
            raise ServerError(status, f"unexpected answer: {error}") from error

    return read


@dataclass
class Call(Generic[T]):
    """One operation's attempts across the servers: the retry state machine."""

    core: ClientCore
    operation: Operation[T]
    attempt: int = 1
    last_error: ChangeAgentError | None = None

    def request(self) -> Request:
        operation = self.operation
        base = operation.server or self.core.servers[self.core.current]
        url = base + operation.path
        return Request(
            operation.method,
            url,
            operation.params,
            operation.headers,
            operation.body,
            operation.timeout_s,
        )

    def answered(self, status: int, headers: dict[str, str], body: bytes) -> Done[T] | Wait:
        """Headers with lower-case names."""
        if 200 <= status < 300:
            return Done(self.operation.parse(status, body))
        error = error_for(status, error_message(body))
        if status not in RETRY_STATUSES or not self.operation.retry:
            raise error
        return self._retry(error, retry_after_s(headers))

    def failed(self, reason: str) -> Wait:
        """The request got no answer (connection refused or reset, timeout)."""
        url = self.operation.server or self.core.servers[self.core.current]
        return self._retry(ConnectionFailed(f"{url}: {reason}"), None)

    def _retry(self, error: ChangeAgentError, retry_after: float | None) -> Wait:
        self.last_error = error
        if not self.operation.retry:
            raise error
        if self.attempt >= self.core.policy.attempts_max:
            raise self._final_error()
        self.core.current = (self.core.current + 1) % len(self.core.servers)
        delay = self.core.policy.delay_s(self.attempt, retry_after, self.core.rng)
        self.attempt += 1
        return Wait(delay)

    def _final_error(self) -> ChangeAgentError:
        error = self.last_error
        if isinstance(error, Unavailable):
            return Unavailable(error.status, f"{error.message} ({self.attempt} attempts)")
        assert error is not None
        if isinstance(error, ConnectionFailed):
            return ConnectionFailed(f"no server answered in {self.attempt} attempts: {error}")
        return error


@dataclass
class ClientCore:
    """The servers, the retry policy and the operations. `current` is the server
    used next: it stays on one that answers and moves on when one fails."""

    servers: list[str]
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random)
    current: int = 0

    @classmethod
    def create(
        cls, servers: str | Sequence[str], policy: RetryPolicy | None, seed: int | None
    ) -> ClientCore:
        urls = [servers] if isinstance(servers, str) else list(servers)
        if not urls:
            raise ValueError("give at least one server URL")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"server URL must start with http:// or https://: {url!r}")
        return cls([url.rstrip("/") for url in urls], policy or RetryPolicy(), random.Random(seed))

    def call(self, operation: Operation[T]) -> Call[T]:
        return Call(self, operation)

    # The operations -------------------------------------------------------------

    def post(
        self, data: Any, tags: Sequence[str] | None, type: int, idempotency_key: str
    ) -> Operation[Change]:
        document: dict[str, Any] = {"data": data, "type": type}
        if tags is not None:
            document["tags"] = list(tags)
        headers = (("Content-Type", "application/json"), ("Idempotency-Key", idempotency_key))
        body = orjson.dumps(document)
        return Operation("POST", "/changes", parse_json(Change.from_json), (), headers, body)

    def get(self, id: int, consistency: str | None) -> Operation[Change]:
        params = (("consistency", consistency),) if consistency else ()
        path = f"/changes/{quote(str(int(id)))}"
        return Operation("GET", path, parse_json(Change.from_json), params)

    def changes(
        self,
        since: int,
        limit: int,
        tags: Sequence[str],
        type: int | None,
        consistency: str | None,
        block_s: float | None = None,
    ) -> Operation[Page]:
        if isinstance(tags, str):
            raise TypeError("tags must be a sequence of strings, not one string")
        params: list[tuple[str, str]] = [("since", str(since)), ("limit", str(limit))]
        params += [("tag", tag) for tag in tags]
        if type is not None:
            params.append(("type", str(type)))
        if consistency:
            params.append(("consistency", consistency))
        timeout_s = None
        if block_s is not None:
            params.append(("block", repr(float(block_s))))
            timeout_s = block_s + LONG_POLL_MARGIN_S
        parse = parse_json(Page.from_json)
        return Operation("GET", "/changes", parse, tuple(params), timeout_s=timeout_s)

    def cluster(self) -> Operation[dict[str, Any]]:
        return Operation("GET", "/cluster", parse_json(_object))

    def last_index(self) -> Operation[int]:
        """The server's applied index (GET /diagnostics/raft): no change it serves
        has a larger id, so reading after it starts at the end of the log."""
        return Operation("GET", "/diagnostics/raft", parse_json(_applied_index))

    def add_member(self, address: str) -> Operation[dict[str, Any]]:
        """Not retried: an attempt cut off may have added the member already."""
        headers = (("Content-Type", "application/json"),)
        body = orjson.dumps({"address": address})
        return Operation("POST", "/cluster/members", parse_json(_object), (), headers, body, False)

    def remove_member(self, id: str) -> Operation[dict[str, Any]]:
        """Not retried: an attempt cut off may have removed the member already."""
        path = f"/cluster/members/{quote(id, safe='')}"
        return Operation("DELETE", path, parse_json(_object), retry=False)

    def config(self) -> Operation[str]:
        return Operation("GET", "/config", _text)

    def set_config(self, yaml_text: str) -> Operation[str]:
        """Retried: setting the same configuration twice is harmless."""
        headers = (("Content-Type", "application/yaml"),)
        return Operation("PUT", "/config", _text, (), headers, yaml_text.encode())

    def backup(self, read_timeout_s: float) -> Operation[None]:
        """GET /backup: the shell streams the answer to a file (client/backup.py), so
        this operation only describes the request and maps its errors. Retried (a GET:
        each attempt is a new backup); 409 (one already running) is not."""
        return Operation("GET", "/backup", _streamed, timeout_s=read_timeout_s)

    def mark(self, up: bool, server: int | str | None) -> Operation[dict[str, Any]]:
        """PUT /health on one server, not retried elsewhere."""
        headers = (("Content-Type", "application/x-www-form-urlencoded"),)
        body = b"up=true" if up else b"up=false"
        base = self.server_url(server)
        return Operation("PUT", "/health", parse_json(_object), (), headers, body, False, base)

    def server_url(self, server: int | str | None) -> str:
        """One server's base URL: the given URL or index, else the current one."""
        if isinstance(server, str):
            return server.rstrip("/")
        return self.servers[self.current if server is None else server]

    def health_url(self, server: int | str | None) -> str:
        """GET /health of one server: the given URL or index, else the current one."""
        return self.server_url(server) + "/health"


def _streamed(status: int, body: bytes) -> None:
    """A success whose body the shell read as a stream itself."""


def _text(status: int, body: bytes) -> str:
    return body.decode(errors="replace")


def _applied_index(document: Any) -> int:
    index = _object(document).get("appliedIndex")
    if not isinstance(index, int):
        raise ValueError("no appliedIndex in /diagnostics/raft")
    return index


def _object(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object")
    return document


def health(url: str, status: int, body: bytes) -> Health:
    """A /health answer: 200 is healthy, 503 names the reason; others are errors."""
    text = body.decode(errors="replace").strip()
    if status in (200, 503):
        return Health(url.removesuffix("/health"), status == 200, text)
    raise error_for(status, error_message(body))


@dataclass
class Follower:
    """follow()'s position and its lag checks, without I/O. Each page asks for
    changes after `since` only, so a switch to another member (one that failed, or
    one that lags) can delay changes but never repeat or reorder them; `take`
    moves `since` past what it hands out.

    The lag rule, with several servers and `lag_check_s` set: long polls block at
    most `lag_check_s`, and a member is trusted for `lag_check_s` after a check.
    When a page shows the member has nothing more (`at_end`) and that time has
    passed (or it is the first end reached, or `stop_at_end` is about to stop),
    `lag_check` hands the shell a LagCheck: it asks the other servers, in turn,
    for the first change after the position (same filters, no blocking); when one
    has it, it asks the member in use again, and moves `current` to the other one
    if the member in use still has nothing after the position (or does not answer).
    A member that delivers but lags is caught the same way: every page that
    reaches its end counts, not only a long poll that ran out. Comparing applied
    indexes (last_index()) instead would be blind to tags and type filters, and a
    member that still has a backlog for this consumer gains nothing by a switch:
    what it delivers must be read first either way."""

    since: int
    tags: tuple[str, ...]
    type: int | None
    block_s: float
    limit: int
    skip_missed: bool
    stop_at_end: bool = False
    lag_check_s: float | None = LAG_CHECK_S
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    done: bool = False  # stop_at_end and a page reached the end
    checked_at: float | None = None  # when the last lag check began
    check_due: bool = False
    switches: int = 0  # moves to another member because the one in use lagged

    def __post_init__(self) -> None:
        if self.lag_check_s is not None and not self.lag_check_s > 0:
            raise ValueError("lag_check_s must be positive (or None: no lag checks)")

    def checks_lag(self, core: ClientCore) -> bool:
        """Lag checks need another server to compare with."""
        return self.lag_check_s is not None and len(core.servers) > 1

    def operation(self, core: ClientCore) -> Operation[Page]:
        """The next read: a long poll, at most `lag_check_s` long when lag checks
        run (a quiet member is asked again, and the others probed, that often)."""
        block_s = self.block_s
        if self.stop_at_end:
            block_s = 0.0
        elif self.lag_check_s is not None and self.checks_lag(core):
            block_s = min(block_s, self.lag_check_s)
        return core.changes(self.since, self.limit, self.tags, self.type, None, block_s)

    def take(self, page: Page) -> list[Change]:
        """The page's new changes in id order; ChangesMissed when purge removed
        changes after `since` (unless skipping them: the position then moves to just
        before the first change still stored). Notes whether a lag check is due."""
        if page.missed:
            if not self.skip_missed:
                raise ChangesMissed(self.since, page.first_retained)
            if page.first_retained is not None:
                self.since = max(self.since, page.first_retained - 1)
        fresh = sorted(
            (change for change in page.changes if change.id > self.since), key=lambda c: c.id
        )
        self.done = self.stop_at_end and page.at_end
        self.check_due = page.at_end and (
            self.stop_at_end
            or self.checked_at is None
            or self.lag_check_s is None
            or self.clock() - self.checked_at >= self.lag_check_s
        )
        return fresh

    def taken(self, change: Change) -> None:
        """The caller has the change: the position moves past it."""
        self.since = max(self.since, change.id)

    def lag_check(self, core: ClientCore) -> LagCheck | None:
        """The lag check to run now (after the last page's changes were taken), or
        None when none is due."""
        due, self.check_due = self.check_due, False
        if not due or not self.checks_lag(core):
            return None
        self.checked_at = self.clock()
        count = len(core.servers)
        others = [(core.current + step) % count for step in range(1, count)]
        return LagCheck(self, core, core.current, others)

    def probe(self, core: ClientCore, server: int, timeout_s: float) -> Operation[Page]:
        """One non-blocking read of the first change after the position, on one
        server (an index into core.servers), not retried."""
        operation = core.changes(self.since, 1, self.tags, self.type, None, 0.0)
        return replace(operation, retry=False, server=core.servers[server], timeout_s=timeout_s)


@dataclass
class LagCheck:
    """One lag check (see Follower), run by a shell like a Call:

        while (operation := check.operation()) is not None:
            try: page = run(operation)                  # one attempt, one server
            except ChangeAgentError: page = None
            check.answered(page)

    It probes the other servers in turn until one has a change after the
    position; then it asks the server in use again, and switches `core.current`
    to the one ahead unless the server in use now has a change after the position
    too (then it was only a moment behind, and its next long poll delivers)."""

    follower: Follower
    core: ClientCore
    reading: int  # the server in use when the check began
    others: list[int]
    ahead: int | None = None  # the first other server found ahead
    over: bool = False
    switched_to: int | None = None

    def probe_timeout_s(self) -> float:
        assert self.follower.lag_check_s is not None
        return max(PROBE_TIMEOUT_MIN_S, self.follower.lag_check_s)

    def probing(self) -> int:
        """The index of the server the next probe goes to."""
        return self.reading if self.ahead is not None else self.others[0]

    def operation(self) -> Operation[Page] | None:
        if self.over or (self.ahead is None and not self.others):
            self.over = True
            return None
        return self.follower.probe(self.core, self.probing(), self.probe_timeout_s())

    def answered(self, page: Page | None) -> None:
        """The probe's page, or None when it failed (no answer, an error status)."""
        since = self.follower.since
        has_more = page is not None and (
            page.missed or any(change.id > since for change in page.changes)
        )
        if self.ahead is None:
            server = self.others.pop(0)
            if has_more:
                self.ahead = server
            return
        self.over = True
        if not has_more and self.core.current == self.reading:
            self.core.current = self.ahead
            self.switched_to = self.ahead
            self.follower.switches += 1
            self.follower.done = False  # the end was the lagging member's


def read_checkpoint(path: str) -> int:
    """The id saved in a checkpoint file; 0 when there is none yet."""
    try:
        with open(path, encoding="ascii") as file:
            return int(file.read().strip() or 0)
    except FileNotFoundError:
        return 0


def write_checkpoint(path: str, since: int) -> None:
    """Save the position atomically: a new file renamed over the old, made durable."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="ascii") as file:
        file.write(f"{since}\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
