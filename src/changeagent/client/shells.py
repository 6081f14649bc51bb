"""The thin I/O shells over the core: Client (httpx.Client) and AsyncClient
(httpx.AsyncClient). Each only sends the core's requests and sleeps its waits."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Generator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from changeagent.client.backup import BACKUP_READ_TIMEOUT_S, BackupFile
from changeagent.client.core import (
    LAG_CHECK_S,
    ClientCore,
    Done,
    Follower,
    LagCheck,
    Operation,
    Request,
    RetryPolicy,
    Wait,
    health,
    read_checkpoint,
    write_checkpoint,
)
from changeagent.client.errors import ChangeAgentError, ConnectionFailed
from changeagent.client.model import Backup, Change, Health, Page

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0


def _ssl_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext | bool:
    """The TLS settings: system roots unless `ca_file`; a client certificate if given."""
    if ca_file is None and cert_file is None:
        return True
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def _http_options(
    auth: tuple[str, str] | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    timeout_s: float,
    connect_timeout_s: float,
) -> dict[str, Any]:
    return {
        "auth": auth,
        "verify": _ssl_context(ca_file, cert_file, key_file),
        "timeout": httpx.Timeout(timeout_s, connect=connect_timeout_s),
        "trust_env": False,
    }


def _send_arguments(request: Request) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "method": request.method,
        "url": request.url,
        "params": list(request.params),
        "headers": list(request.headers),
        "content": request.body,
    }
    if request.timeout_s is not None:
        connect_s = min(CONNECT_TIMEOUT_S, request.timeout_s)
        arguments["timeout"] = httpx.Timeout(request.timeout_s, connect=connect_s)
    return arguments


def _headers(response: httpx.Response) -> dict[str, str]:
    return {name.lower(): value for name, value in response.headers.items()}


class Client:
    """A synchronous client of one changeagent cluster.

    `servers`: one URL or several (members of one cluster), tried in turn on failure.
    `auth`: (user, password) for HTTP Basic. `ca_file`: CA bundle to verify HTTPS
    servers; `cert_file`/`key_file`: a client certificate for mutual TLS.
    `timeout_s`: per request (read, write, pool); `connect_timeout_s`: per connection.
    Use as a context manager, or call close().
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        auth: tuple[str, str] | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout_s: float = 40.0,
        connect_timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        seed: int | None = None,
    ) -> None:
        self._core = ClientCore.create(servers, retry, seed)
        options = _http_options(auth, ca_file, cert_file, key_file, timeout_s, connect_timeout_s)
        self._http = httpx.Client(**options)

    @property
    def current_server(self) -> str:
        """The URL of the server the next request goes to: the client stays on one
        that answers and moves on when it fails (or, in follow(), when it lags)."""
        return self._core.server_url(None)

    def _run(self, operation: Operation[T]) -> T:
        call = self._core.call(operation)
        while True:
            request = call.request()
            step: Done[T] | Wait
            try:
                response = self._http.request(**_send_arguments(request))
            except httpx.TransportError as error:
                step = call.failed(f"{type(error).__name__}: {error}")
            else:
                step = call.answered(response.status_code, _headers(response), response.content)
            if isinstance(step, Done):
                return step.value
            time.sleep(step.delay_s)

    def post(
        self,
        data: Any,
        tags: Sequence[str] | None = None,
        type: int = 0,
        idempotency_key: str | None = None,
    ) -> Change:
        """Store one change and return it as stored. Retried across the servers on
        connection failures, timeouts and 503 with one Idempotency-Key (a new uuid4
        unless given), so it is stored exactly once."""
        key = idempotency_key or str(uuid.uuid4())
        return self._run(self._core.post(data, tags, type, key))

    def get(self, id: int, consistency: str | None = None) -> Change:
        """The change with this id; NotFound if there is none (or it was purged)."""
        return self._run(self._core.get(id, consistency))

    def changes(
        self,
        since: int = 0,
        limit: int = 100,
        tags: Sequence[str] = (),
        type: int | None = None,
        consistency: str | None = None,
    ) -> Page:
        """One page of changes after `since` (tags ORed; `type` filters);
        `consistency="linearizable"` sees every write acknowledged before it."""
        return self._run(self._core.changes(since, limit, tags, type, consistency))

    def follow(
        self,
        since: int = 0,
        *,
        checkpoint: str | None = None,
        tags: Sequence[str] = (),
        type: int | None = None,
        block_s: float = 30.0,
        limit: int = 1000,
        skip_missed: bool = False,
        stop_at_end: bool = False,
        lag_check_s: float | None = LAG_CHECK_S,
    ) -> Generator[Change, None, None]:
        """Every change after `since` (or after the id saved in `checkpoint`, when
        that file exists), in id order, forever: long-polls `block_s` at a time and
        moves to another server when one fails, never yielding a change twice or
        out of order. Raises ChangesMissed when purge removed changes it had not
        yielded, unless `skip_missed`. With `checkpoint`, the position is saved
        atomically when the caller asks for the next change (it has then taken the
        previous one), so a restarted consumer resumes after the last one.
        `stop_at_end` ends the iteration once the log's end is reached instead of
        waiting for more (then nothing waits: no long-poll).

        With several servers, it also moves away from a member that answers but
        lags: once the member has nothing more and `lag_check_s` has passed since
        the last check, the others are asked (one cheap non-blocking read each)
        for a change after the position, and the first one that has it is used
        while the member in use still has none; long polls then last at most
        `lag_check_s`. `lag_check_s=None` turns this off."""
        if checkpoint is not None:
            since = read_checkpoint(checkpoint) or since
        batches = self.follow_pages(
            since,
            tags=tags,
            type=type,
            block_s=block_s,
            limit=limit,
            skip_missed=skip_missed,
            stop_at_end=stop_at_end,
            lag_check_s=lag_check_s,
        )
        for batch in batches:
            for change in batch:
                yield change
                if checkpoint is not None:
                    write_checkpoint(checkpoint, change.id)

    def follow_pages(
        self,
        since: int = 0,
        *,
        tags: Sequence[str] = (),
        type: int | None = None,
        block_s: float = 30.0,
        limit: int = 1000,
        skip_missed: bool = False,
        stop_at_end: bool = False,
        lag_check_s: float | None = LAG_CHECK_S,
        stop: threading.Event | None = None,
    ) -> Generator[list[Change], None, None]:
        """As follow(), one non-empty batch (at most `limit` changes, in id order) per
        answer, for consumers that store a page at a time; the position moves past a
        batch when the next one is asked for. `stop`, when set (from another thread),
        ends the iteration after the answer in flight, also an empty one: a caught-up
        consumer notices it within one long poll (`block_s`, or `lag_check_s` with
        several servers)."""
        follower = Follower(
            since, tuple(tags), type, block_s, limit, skip_missed, stop_at_end, lag_check_s
        )
        while not follower.done and not (stop is not None and stop.is_set()):
            batch = follower.take(self._run(follower.operation(self._core)))
            if batch:
                yield batch
                follower.taken(batch[-1])
            if check := follower.lag_check(self._core):
                self._check_lag(check)

    def _check_lag(self, check: LagCheck) -> None:
        """Run a lag check's probes (one attempt each; a failure counts as no answer)."""
        while (operation := check.operation()) is not None:
            page: Page | None
            try:
                page = self._run(operation)
            except ChangeAgentError:
                page = None
            check.answered(page)

    def cluster(self) -> dict[str, Any]:
        """The GET /cluster document."""
        return self._run(self._core.cluster())

    def last_index(self) -> int:
        """The largest id the server in use may hold (its applied index): following
        from it starts at the end of the log."""
        return self._run(self._core.last_index())

    def add_member(self, address: str) -> dict[str, Any]:
        """Add a node by its address (host:port); the /cluster document after. Not
        retried: on ConnectionFailed, look at cluster() before trying again."""
        return self._run(self._core.add_member(address))

    def remove_member(self, id: str) -> dict[str, Any]:
        """Remove the member with this (base-36) id; the /cluster document after. Not
        retried, as add_member."""
        return self._run(self._core.remove_member(id))

    def config(self) -> str:
        """The cluster's configuration as YAML text (GET /config)."""
        return self._run(self._core.config())

    def set_config(self, yaml_text: str) -> str:
        """Replace the cluster's configuration (PUT /config); the applied YAML."""
        return self._run(self._core.set_config(yaml_text))

    def mark(self, up: bool, server: int | str | None = None) -> dict[str, Any]:
        """Mark one server (URL or index; default the one in use) up or down for
        load balancers: its GET /health answers 503 while down."""
        return self._run(self._core.mark(up, server))

    def backup(
        self, path: str | os.PathLike[str], *, read_timeout_s: float = BACKUP_READ_TIMEOUT_S
    ) -> Backup:
        """Save a backup of the server in use (GET /backup: its committed log) to
        `path`, atomically: a temporary file is checked (length, SHA-256), fsynced and
        renamed over `path`; a failed attempt leaves `path` as it was. Retried like
        other reads (each attempt starts over); Conflict while that server makes
        another backup; InvalidBackup when what arrived fails the check.
        `read_timeout_s`: the longest wait for the next bytes (the server copies
        the whole database before it sends the first)."""
        call = self._core.call(self._core.backup(read_timeout_s))
        while True:
            request = call.request()
            step: Done[None] | Wait
            file = BackupFile(path)
            try:
                with self._http.stream(**_send_arguments(request)) as response:
                    if 200 <= response.status_code < 300:
                        for chunk in response.iter_bytes():
                            file.write(chunk)
                        return file.commit()
                    headers = _headers(response)
                    step = call.answered(response.status_code, headers, response.read())
            except httpx.TransportError as error:
                step = call.failed(f"{type(error).__name__}: {error}")
            finally:
                file.discard()
            assert isinstance(step, Wait)  # an error status raised, a success returned
            time.sleep(step.delay_s)

    def health(self, server: int | str | None = None) -> Health:
        """GET /health of one server (URL or index; default the one in use), not
        retried: a 503 is an answer here, not an error."""
        url = self._core.health_url(server)
        try:
            response = self._http.get(url)
        except httpx.TransportError as error:
            raise ConnectionFailed(f"{url}: {type(error).__name__}: {error}") from error
        return health(url, response.status_code, response.content)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of Client: the same arguments, operations and errors; use
    `async with`, or await aclose()."""

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        auth: tuple[str, str] | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout_s: float = 40.0,
        connect_timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        seed: int | None = None,
    ) -> None:
        self._core = ClientCore.create(servers, retry, seed)
        options = _http_options(auth, ca_file, cert_file, key_file, timeout_s, connect_timeout_s)
        self._http = httpx.AsyncClient(**options)

    @property
    def current_server(self) -> str:
        """As Client.current_server."""
        return self._core.server_url(None)

    async def _run(self, operation: Operation[T]) -> T:
        call = self._core.call(operation)
        while True:
            request = call.request()
            step: Done[T] | Wait
            try:
                response = await self._http.request(**_send_arguments(request))
            except httpx.TransportError as error:
                step = call.failed(f"{type(error).__name__}: {error}")
            else:
                step = call.answered(response.status_code, _headers(response), response.content)
            if isinstance(step, Done):
                return step.value
            await asyncio.sleep(step.delay_s)

    async def post(
        self,
        data: Any,
        tags: Sequence[str] | None = None,
        type: int = 0,
        idempotency_key: str | None = None,
    ) -> Change:
        """As Client.post."""
        key = idempotency_key or str(uuid.uuid4())
        return await self._run(self._core.post(data, tags, type, key))

    async def get(self, id: int, consistency: str | None = None) -> Change:
        """As Client.get."""
        return await self._run(self._core.get(id, consistency))

    async def changes(
        self,
        since: int = 0,
        limit: int = 100,
        tags: Sequence[str] = (),
        type: int | None = None,
        consistency: str | None = None,
    ) -> Page:
        """As Client.changes."""
        return await self._run(self._core.changes(since, limit, tags, type, consistency))

    async def follow(
        self,
        since: int = 0,
        *,
        checkpoint: str | None = None,
        tags: Sequence[str] = (),
        type: int | None = None,
        block_s: float = 30.0,
        limit: int = 1000,
        skip_missed: bool = False,
        stop_at_end: bool = False,
        lag_check_s: float | None = LAG_CHECK_S,
    ) -> AsyncGenerator[Change, None]:
        """As Client.follow, an async iterator."""
        if checkpoint is not None:
            since = read_checkpoint(checkpoint) or since
        batches = self.follow_pages(
            since,
            tags=tags,
            type=type,
            block_s=block_s,
            limit=limit,
            skip_missed=skip_missed,
            stop_at_end=stop_at_end,
            lag_check_s=lag_check_s,
        )
        async for batch in batches:
            for change in batch:
                yield change
                if checkpoint is not None:
                    write_checkpoint(checkpoint, change.id)

    async def follow_pages(
        self,
        since: int = 0,
        *,
        tags: Sequence[str] = (),
        type: int | None = None,
        block_s: float = 30.0,
        limit: int = 1000,
        skip_missed: bool = False,
        stop_at_end: bool = False,
        lag_check_s: float | None = LAG_CHECK_S,
    ) -> AsyncGenerator[list[Change], None]:
        """As Client.follow_pages, an async iterator."""
        follower = Follower(
            since, tuple(tags), type, block_s, limit, skip_missed, stop_at_end, lag_check_s
        )
        while not follower.done:
            batch = follower.take(await self._run(follower.operation(self._core)))
            if batch:
                yield batch
                follower.taken(batch[-1])
            if check := follower.lag_check(self._core):
                await self._check_lag(check)

    async def _check_lag(self, check: LagCheck) -> None:
        """As Client._check_lag."""
        while (operation := check.operation()) is not None:
            page: Page | None
            try:
                page = await self._run(operation)
            except ChangeAgentError:
                page = None
            check.answered(page)

    async def cluster(self) -> dict[str, Any]:
        """As Client.cluster."""
        return await self._run(self._core.cluster())

    async def last_index(self) -> int:
        """As Client.last_index."""
        return await self._run(self._core.last_index())

    async def add_member(self, address: str) -> dict[str, Any]:
        """Add a node by its address (host:port); the /cluster document after. Not
        retried: on ConnectionFailed, look at cluster() before trying again."""
        return await self._run(self._core.add_member(address))

    async def remove_member(self, id: str) -> dict[str, Any]:
        """Remove the member with this (base-36) id; the /cluster document after. Not
        retried, as add_member."""
        return await self._run(self._core.remove_member(id))

    async def config(self) -> str:
        """The cluster's configuration as YAML text (GET /config)."""
        return await self._run(self._core.config())

    async def set_config(self, yaml_text: str) -> str:
        """Replace the cluster's configuration (PUT /config); the applied YAML."""
        return await self._run(self._core.set_config(yaml_text))

    async def mark(self, up: bool, server: int | str | None = None) -> dict[str, Any]:
        """Mark one server (URL or index; default the one in use) up or down for
        load balancers: its GET /health answers 503 while down."""
        return await self._run(self._core.mark(up, server))

    async def backup(
        self, path: str | os.PathLike[str], *, read_timeout_s: float = BACKUP_READ_TIMEOUT_S
    ) -> Backup:
        """As Client.backup (the file is written from the event loop's thread, its
        final fsync and rename on a worker thread)."""
        call = self._core.call(self._core.backup(read_timeout_s))
        while True:
            request = call.request()
            step: Done[None] | Wait
            file = BackupFile(path)
            try:
                async with self._http.stream(**_send_arguments(request)) as response:
                    if 200 <= response.status_code < 300:
                        async for chunk in response.aiter_bytes():
                            file.write(chunk)
                        return await asyncio.to_thread(file.commit)
                    headers = _headers(response)
                    step = call.answered(response.status_code, headers, await response.aread())
            except httpx.TransportError as error:
                step = call.failed(f"{type(error).__name__}: {error}")
            finally:
                file.discard()
            assert isinstance(step, Wait)
            await asyncio.sleep(step.delay_s)

    async def health(self, server: int | str | None = None) -> Health:
        """As Client.health."""
        url = self._core.health_url(server)
        try:
            response = await self._http.get(url)
        except httpx.TransportError as error:
            raise ConnectionFailed(f"{url}: {type(error).__name__}: {error}") from error
        return health(url, response.status_code, response.content)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
