"""Wiring of a node to its peers: the transport, the cluster listener, membership.

The carrier follows the flags, as in ChangeAgent: with `-cp` peers talk
length-prefixed frames on the cluster port (mutual TLS with -ccert/-ckey/-cca)
and members are added by their cluster address; without it they talk over a
WebSocket on the plain API port, and members are added by their API address.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from changeagent.node.node import Node
from changeagent.security.tls_files import ClusterTls
from changeagent.transport import Dialer, TcpDialer, Transport, WebSocketDialer

log = logging.getLogger(__name__)


def build_transport(
    node: Node, cluster_tls: ClusterTls | None, use_cluster_port: bool
) -> Transport:
    dialer: Dialer
    if use_cluster_port:
        dialer = TcpDialer(cluster_tls.client_context() if cluster_tls is not None else None)
    else:
        dialer = WebSocketDialer(None)
    transport = Transport(
        node.node_id,
        on_message=node.on_peer_message,
        on_request=node.on_request,
        resolve_address=node.address_of,
        dialer=dialer,
        config=node.limits.transport_config(),
        cluster_id=node.identity.cluster_id,
        secret=node.identity.secret,
    )
    node.attach_transport(transport)
    return transport


async def serve_cluster_port(
    transport: Transport, host: str, port: int, cluster_tls: ClusterTls | None
) -> int:
    """Listen for peers on `-cp`; return the bound port (useful with 0)."""
    context: ssl.SSLContext | None = (
        cluster_tls.server_context() if cluster_tls is not None else None
    )
    server: asyncio.Server = await transport.serve_tcp(host, port, context)
    bound = int(server.sockets[0].getsockname()[1])
    scheme = "tls" if context is not None else "tcp"
    # Tests and scripts read this line to learn the cluster port.
    log.info("changeagent cluster port listening on %s://%s:%d", scheme, host, bound)
    return bound
