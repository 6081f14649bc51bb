"""Handlers for the change list: POST /changes, GET /changes, GET /changes/{id}."""

from __future__ import annotations

from aiohttp import web

from changeagent.api.caching import NO_STORE, matches, page_etag
from changeagent.api.context import state_of
from changeagent.api.errors import ApiError
from changeagent.api.feeds import FeedRequest, serve_feed
from changeagent.api.params import change_query, index_in_path, seconds_parameter
from changeagent.api.wire import (
    JSON,
    JsonResponse,
    LongPollDelivery,
    WriteDelivery,
    can_write_directly,
)
from changeagent.change import NewChange, parse_change_body
from changeagent.node.node import Node

NO_STORE_HEADERS = {"Cache-Control": NO_STORE}


def idempotency_key(request: web.Request, key_bytes_max: int) -> str:
    key = request.headers.get("Idempotency-Key", "")
    if len(key.encode()) > key_bytes_max:
        raise ApiError(400, f"Idempotency-Key may be at most {key_bytes_max} bytes")
    return key


async def post_change(request: web.Request) -> web.Response:
    node = state_of(request).node
    if request.content_type != JSON:
        raise ApiError(415, "POST /changes needs Content-Type: application/json")
    body = await request.read()
    change = parse_change_body(body)
    key = idempotency_key(request, node.limits.idempotency_key_bytes_max)
    # Where it can, the Ready loop itself writes the answer once the change is applied.
    delivery = WriteDelivery(request) if can_write_directly(request) else None
    stored = await store_change(node, change, key, delivery)
    return JsonResponse(stored, already_sent=delivery is not None and delivery.sent)


async def store_change(
    node: Node, change: NewChange, key: str, delivery: WriteDelivery | None
) -> bytes:
    """The stored change's bytes, for POST /changes here and in the front door
    (api/front_door.py). `delivery` may have written them already (see `sent`)."""
    try:
        return await node.append_change(change, key, delivery)
    except Exception:
        if delivery is None or delivery.sent_body is None:
            raise
        # Answered already, the change applied: a failure of the wait after that (a
        # commit timeout firing in between) must not write a second answer.
        return delivery.sent_body
    finally:
        if delivery is not None:
            delivery.close()


CONSISTENCY_VALUES = ("local", "linearizable")


async def read_barrier(request: web.Request) -> None:
    """`consistency=linearizable`: first catch up with every write acknowledged
    before this request began (ReadIndex through the leader); the default,
    `local`, serves this node's applied prefix at once."""
    value = request.query.get("consistency", "local")
    if value not in CONSISTENCY_VALUES:
        raise ApiError(400, "consistency must be local or linearizable")
    if value == "linearizable":
        await state_of(request).node.linearizable_barrier()


async def get_changes(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    node = state.node
    query = change_query(request, node.limits)
    feed = FeedRequest.of(request, node.limits.block_max_s)
    if feed.kind is not None:
        await read_barrier(request)
        return await serve_feed(request, feed.kind, feed, query)
    block_s = seconds_parameter(request, "block", node.limits.block_max_s)
    await read_barrier(request)
    if block_s > 0:
        # A long-poll, answered as soon as a matching change commits; never cached.
        # Inline, not a function of its own: a frame less for every waiting request.
        # Where it can, the commit notification itself writes the answer (`delivery`).
        delivery = LongPollDelivery(request) if can_write_directly(request) else None
        page = await node.wait_changes(query, block_s, delivery)
        sent = delivery is not None and delivery.sent
        return JsonResponse(page.encode(), already_sent=sent, headers=NO_STORE_HEADERS)
    page = await node.wait_changes(query, 0)
    etag = page_etag(page)
    headers = {"Cache-Control": state.page_caching.cache_control(page, query.limit), "ETag": etag}
    if matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return JsonResponse(page.encode(), headers=headers)


async def get_change(request: web.Request) -> web.Response:
    node = state_of(request).node
    index = index_in_path(request)
    await read_barrier(request)
    stored = node.get_change(index)
    if stored is None:
        raise ApiError(404, "Not found")
    return JsonResponse(stored)
