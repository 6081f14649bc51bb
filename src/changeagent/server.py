"""Composition root: open storage, start the node, serve HTTP, shut down gracefully.

Each step is a small named function so the order is readable: storage opens
before the node, the node starts before the listener, and shutdown runs in
reverse (stop listening, answer long-polls, finish in-flight requests, close).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from changeagent.api.app import build_app
from changeagent.config import Settings, load_settings_file
from changeagent.node.node import Node, NodeLimits
from changeagent.storage import Storage

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 60.0
# The hot tail of recent changes kept in memory. 16 MiB holds ~100,000 typical
# changes (enough for every consumer near the tail) and keeps a node with a
# million stored changes within ~30 MB of an empty one.
TAIL_CACHE_BYTES_DEFAULT = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerOptions:
    data_dir: Path
    port: int = 8080
    host: str = "0.0.0.0"
    settings_path: Path | None = None
    prefix: str = ""
    limits: NodeLimits = field(default_factory=NodeLimits)
    tail_cache_bytes: int = TAIL_CACHE_BYTES_DEFAULT
    shutdown_grace_s: float = SHUTDOWN_GRACE_S


async def open_node(options: ServerOptions) -> Node:
    storage = await asyncio.to_thread(
        Storage.open, options.data_dir, tail_cache_bytes=options.tail_cache_bytes
    )
    settings = (
        await asyncio.to_thread(load_settings_file, options.settings_path)
        if options.settings_path is not None
        else Settings()
    )
    node = Node(storage, settings, options.settings_path, options.limits)
    await node.start()
    return node


async def start_listener(node: Node, options: ServerOptions) -> tuple[web.AppRunner, int]:
    app = build_app(node, options.prefix)
    runner = web.AppRunner(app, shutdown_timeout=options.shutdown_grace_s, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port, backlog=1024)
    await site.start()
    return runner, _bound_port(runner, options.port)


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(number)


async def serve(options: ServerOptions) -> None:
    node = await open_node(options)
    try:
        runner, port = await start_listener(node, options)
        # Tests and scripts read this line to learn the port (useful with -p 0).
        log.warning("changeagent listening on http://%s:%d%s", options.host, port, options.prefix)
        await wait_for_stop_signal()
        log.warning("shutting down: no new connections; finishing in-flight requests")
        await runner.cleanup()
    finally:
        await node.close()
        await asyncio.to_thread(node.storage.close)
    log.warning("changeagent stopped")
