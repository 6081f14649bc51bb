"""Web hooks: validate a change with outside systems before it enters the log.

Every configured hook gets the change as the client sent it (`{"data", "tags",
"type"}` as JSON), all hooks in parallel. Any non-2xx answer rejects the change
(the client gets 400 naming the hook and its status); a hook that cannot be
reached or does not answer in time also rejects it (503: retrying may work).
Nothing is written in either case.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp
import orjson

from changeagent.change import NewChange
from changeagent.config import WebHook
from changeagent.node.errors import BadRequest, NotAvailable

WEB_HOOK_TIMEOUT_S = 10.0
WEB_HOOK_BODY_BYTES_MAX = 64 * 1024  # how much of a refusal we read for the error message
REASON_CHARS_MAX = 200


class WebHookRejected(BadRequest):
    """A hook answered non-2xx: the change is invalid in its owner's eyes."""


class WebHookUnavailable(NotAvailable):
    """A hook could not be asked: the change may be fine, so the client may retry."""


class WebHookCaller:
    """Owns one HTTP client session for all hook calls of a node."""

    def __init__(self, timeout_s: float = WEB_HOOK_TIMEOUT_S) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def validate(self, hooks: Sequence[WebHook], change: NewChange) -> None:
        """Return when every hook accepted the change; raise otherwise."""
        if not hooks:
            return
        body = request_body(change)
        await asyncio.gather(*(self._call(hook, body) for hook in hooks))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, hook: WebHook, body: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Content-Type": "application/json", **dict(hook.headers)}
        try:
            async with self._session.post(hook.uri, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return
                reason = (await response.content.read(WEB_HOOK_BODY_BYTES_MAX)).decode(
                    errors="replace"
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise WebHookUnavailable(
                f"web hook {hook.uri} could not be reached ({type(error).__name__}); "
                "the change was not stored",
                retry_after_s=1,
            ) from None
        detail = f": {reason.strip()[:REASON_CHARS_MAX]}" if reason.strip() else ""
        raise WebHookRejected(
            f"web hook {hook.uri} rejected the change with status {response.status}{detail}"
        )


def request_body(change: NewChange) -> bytes:
    """The change as a client would have posted it, in JSON."""
    parts = [b'{"data":', change.data_json]
    if change.tags:
        parts += [b',"tags":', orjson.dumps(change.tags)]
    if change.type:
        parts += [b',"type":', str(change.type).encode()]
    parts.append(b"}")
    return b"".join(parts)
