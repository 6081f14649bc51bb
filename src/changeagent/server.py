"""Composition root: open storage, start the node, serve HTTP, shut down gracefully.

Each step is a small named function so the order is readable: storage opens
before the node, the node starts (a lone voter leads) before the cluster port and
then the API listen, and shutdown runs in reverse: stop listening, answer
long-polls and hand leadership over, drain clients' requests while a quorum can
commit them, stop Raft, close the peer links, close storage. This module (with
`shutdown.py`) alone decides that order; the node and the API only offer the steps.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from changeagent.api.app import build_app
from changeagent.api.auth import Authenticator
from changeagent.api.caching import PAGE_CACHE_MAX_AGE_S_DEFAULT, PageCaching
from changeagent.api.front_door import FrontDoor, FrontDoorSite
from changeagent.api.in_flight import RequestsInFlight
from changeagent.api.observe import ACCESS_LOGGER, access_logger
from changeagent.api.streams import (
    MAX_AGE_S_DEFAULT,
    MAX_STREAMS_DEFAULT,
    SEND_TIMEOUT_S_DEFAULT,
    StreamSlots,
)
from changeagent.config import Settings, load_settings_file
from changeagent.ids import format_id
from changeagent.logs import set_log_identity
from changeagent.metrics import NodeMetrics
from changeagent.node.node import Node, NodeLimits
from changeagent.peers import build_transport, serve_cluster_port
from changeagent.security.permissions import warn_if_data_dir_exposed
from changeagent.security.tls_files import ApiTls, ClusterTls
from changeagent.shutdown import GracefulShutdown
from changeagent.storage import TAIL_CACHE_BYTES_DEFAULT, Storage
from changeagent.transport import Transport
from changeagent.version import package_version

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 60.0


@dataclass(frozen=True, slots=True)
class ServerOptions:
    data_dir: Path
    port: int | None = 8080  # plain HTTP; None: no plain listener (TLS only)
    host: str = "0.0.0.0"
    settings_path: Path | None = None
    prefix: str = ""
    limits: NodeLimits = field(default_factory=NodeLimits)
    tail_cache_bytes: int = TAIL_CACHE_BYTES_DEFAULT
    shutdown_grace_s: float = SHUTDOWN_GRACE_S
    # Security (-pw, -sp with -cert/-key/-cas). The CLI has checked they go together.
    password_file: Path | None = None
    secure_port: int | None = None  # the HTTPS listener, with api_tls
    api_tls: ApiTls | None = None
    # Cluster (-cp, -ccert/-ckey/-cca): with cluster_port, peers talk framed TCP on it
    # (mutual TLS with cluster_tls, which the CLI allows only with cluster_port) and
    # members are added by host:cluster_port; without it, a WebSocket on the API port.
    cluster_port: int | None = None
    cluster_tls: ClusterTls | None = None
    # HTTP caching of pages of changes (--page-cache-max-age), and reads of changes
    # without credentials under -pw (--public-reads), which lets shared caches keep them.
    page_cache_max_age_s: int = PAGE_CACHE_MAX_AGE_S_DEFAULT
    public_reads: bool = False
    # Feed streams (GET /changes?feed=...): how many at once, and how long one write
    # may wait for a slow consumer before its stream is dropped.
    streams_max: int = MAX_STREAMS_DEFAULT
    stream_send_timeout_s: float = SEND_TIMEOUT_S_DEFAULT
    stream_max_age_s: float = MAX_AGE_S_DEFAULT
    access_log: bool = False  # --access-log: a record per request on ACCESS_LOGGER

    def page_caching(self) -> PageCaching:
        shared = self.password_file is None or self.public_reads
        return PageCaching(self.page_cache_max_age_s, shared)


async def open_node(options: ServerOptions) -> Node:
    """Open storage and build the node (not started yet)."""
    storage = await asyncio.to_thread(
        Storage.open, options.data_dir, tail_cache_bytes=options.tail_cache_bytes
    )
    settings = (
        await asyncio.to_thread(load_settings_file, options.settings_path)
        if options.settings_path is not None
        else Settings()
    )
    return Node(storage, settings, options.settings_path, options.limits)


@dataclass(frozen=True, slots=True)
class Listeners:
    runner: web.AppRunner
    http_port: int | None  # the bound ports (useful with port 0)
    https_port: int | None


async def start_listener(
    node: Node,
    options: ServerOptions,
    authenticator: Authenticator | None = None,
    api_tls: ssl.SSLContext | None = None,
    transport: Transport | None = None,
    serve_links: bool = True,
    metrics: NodeMetrics | None = None,
) -> Listeners:
    """One application on up to two sites: plain HTTP (-p) and HTTPS (-sp).
    `transport`'s links are served here with `serve_links` (no -cp); either way
    the shutdown closes them (see `shutdown.py`). Every answered request is
    counted in `metrics` by the error middleware and, with
    `options.access_log`, logged by aiohttp's access-log hook (`api/observe.py`)."""
    metrics = metrics if metrics is not None else NodeMetrics(node)
    # aiohttp waits for peers' links on this port too: clients' requests are
    # counted apart from them, for the shutdown's drain.
    in_flight = RequestsInFlight() if transport is not None and serve_links else None
    app = build_app(
        node,
        options.prefix,
        authenticator,
        transport if serve_links else None,
        client_certificates=bool(options.api_tls and options.api_tls.client_ca_file),
        in_flight=in_flight,
        page_caching=options.page_caching(),
        public_reads=options.public_reads,
        streams=StreamSlots(
            options.streams_max, options.stream_send_timeout_s, options.stream_max_age_s
        ),
        metrics=metrics,
        access_log=options.access_log,
    )
    # Plain writes are answered ahead of aiohttp (api/front_door.py), but with
    # --access-log, whose records come from aiohttp's hook.
    door = None if options.access_log else FrontDoor(node, options.prefix, authenticator, metrics)
    GracefulShutdown(node, transport, in_flight, door).attach(app)
    # Without --access-log aiohttp's hook stays off: it costs ~1.7 µs a request.
    runner = web.AppRunner(
        app,
        shutdown_timeout=options.shutdown_grace_s,
        access_log_class=access_logger(options.prefix),
        access_log=logging.getLogger(ACCESS_LOGGER) if options.access_log else None,
    )
    await runner.setup()
    if door is not None:
        door.aiohttp_protocol = runner.server
    http_port = https_port = None
    if options.port is not None:
        http_port = await _start_site(runner, door, options, options.port, None)
    if options.secure_port is not None:
        https_port = await _start_site(runner, door, options, options.secure_port, api_tls)
    return Listeners(runner, http_port, https_port)


async def _start_site(
    runner: web.AppRunner,
    door: FrontDoor | None,
    options: ServerOptions,
    port: int,
    tls: ssl.SSLContext | None,
) -> int:
    before = set(runner.addresses)
    site = (
        web.TCPSite(runner, options.host, port, backlog=1024, ssl_context=tls)
        if door is None
        else FrontDoorSite(runner, door, options.host, port, backlog=1024, ssl_context=tls)
    )
    await site.start()
    bound = _bound_port([a for a in runner.addresses if a not in before], port)
    # Tests and scripts read this line to learn the port (useful with 0).
    scheme = "https" if tls is not None else "http"
    url = f"{scheme}://{options.host}:{bound}{options.prefix}"
    log.info("changeagent listening on %s", url, extra={"url": url})
    return bound


def _bound_port(addresses: list[object], requested: int) -> int:
    for address in addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested


# Python's cyclic garbage collector scans its youngest generation after 700 net
# allocations of container objects. A busy node keeps more than that alive in the
# requests it is serving (64 writes in flight hold ~3,000), so the collector ran
# every ~40 writes and scanned the same live requests each time, and its full
# collections walked everything made at start-up too: 8 % of the event loop's time
# under 64 writers, with pauses up to 16 ms (docs/BENCHMARKS.md, issue 15).
GC_YOUNG_THRESHOLD = 10_000  # the default is 700; the older generations keep theirs


def tune_garbage_collector() -> None:
    """Once serving: what start-up made is moved out of the collector's sight
    (`gc.freeze`: it lives as long as the process), and the youngest generation is
    collected after `GC_YOUNG_THRESHOLD` allocations. Cycles are still collected,
    only in larger rounds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(number)


async def open_authenticator(options: ServerOptions) -> Authenticator | None:
    if options.password_file is None:
        return None
    return await Authenticator.open(options.password_file)


async def serve(options: ServerOptions) -> None:
    # Certificates and the password file are read first: a bad one stops the
    # node (ConfigError, exit 2) before storage opens or anything listens.
    api_tls = options.api_tls.server_context() if options.api_tls is not None else None
    authenticator = await open_authenticator(options)
    warn_if_data_dir_exposed(options.data_dir)
    try:
        await serve_node(options, authenticator, api_tls)
    finally:
        if authenticator is not None:
            await authenticator.close()


async def serve_node(
    options: ServerOptions, authenticator: Authenticator | None, api_tls: ssl.SSLContext | None
) -> None:
    node = await open_node(options)
    identity = node.identity
    set_log_identity(lambda: (identity.node_id, identity.cluster_id))
    log.info(
        "changeagent %s: node %s, cluster %s, data in %s",
        package_version(),
        format_id(identity.node_id),
        format_id(identity.cluster_id),
        options.data_dir,
        extra={"version": package_version(), "data_dir": str(options.data_dir)},
    )
    metrics = NodeMetrics(node)  # before Raft starts: its first fsyncs count too
    use_cluster_port = options.cluster_port is not None
    transport = build_transport(node, options.cluster_tls, use_cluster_port)
    try:
        await node.start()
        if options.cluster_port is not None:
            # Before the API says "listening on": from then on the node can be POSTed
            # to, and forming a cluster needs the cluster port up and advertised.
            cluster_port = await serve_cluster_port(
                transport, options.host, options.cluster_port, options.cluster_tls
            )
            node.cluster.advertise(cluster_port)
        listeners = await start_listener(
            node,
            options,
            authenticator,
            api_tls,
            transport,
            serve_links=not use_cluster_port,
            metrics=metrics,
        )
        if options.cluster_port is None:
            node.cluster.advertise(listeners.http_port or 0)
        tune_garbage_collector()
        await wait_for_stop_signal()
        log.warning("shutting down: no new connections; finishing in-flight requests")
        await listeners.runner.cleanup()
    finally:
        await node.close()
        await transport.close()
        await asyncio.to_thread(node.storage.close)
    log.warning("changeagent stopped")
