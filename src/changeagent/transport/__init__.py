"""Peer transport: one authenticated, persistent, framed connection per peer pair.

How it works. Frames are msgpack arrays (`codec`), validated strictly: anything
malformed raises `FrameError` and closes the connection that carried it. Two
carriers look the same to the rest (`streams`): TCP on the cluster port
(length-prefixed frames, optionally mutual TLS) and a WebSocket on the API port
at `CLUSTER_PATH` (`add_cluster_route`). Every connection opens with a
challenge/HELLO exchange in which both sides prove the cluster secret with
HMAC-SHA256 over fresh nonces (`auth`). Each peer has a bounded send queue and
one task that dials with backoff and writes (`Transport`); when both nodes dial
at once, both keep the connection dialed by the smaller node id.

Use (the node runtime):

    transport = Transport(node_id, on_message=..., on_request=...,
                          resolve_address=..., dialer=TcpDialer(client_tls),
                          cluster_id=cluster_id, secret=secret)
    await transport.serve_tcp(host, cluster_port, server_tls)   # or:
    add_cluster_route(app, transport)                           # WebSocket carrier
    transport.send(peer_id, message)                # Raft: never blocks, may drop
    index = await transport.propose(leader_id, entry_type, data, key)
    index = await transport.read_index(leader_id)
    answer = await transport.call(peer_id, "describe")
    node_id, cluster_id, answer = await transport.call_address("host:port", "join", {...})
    transport.set_cluster(cluster_id, secret)       # after joining (0, b"" to leave)
    transport.stats(); await transport.close()

See DESIGN.md in this directory for the handshake, joining, and trade-offs.
"""

from changeagent.transport.auth import Credentials, PeerIdentity
from changeagent.transport.codec import (
    FRAME_BYTES_MAX_DEFAULT,
    FrameDecoder,
    decode_frame,
    encode_frame,
    encode_prefixed,
)
from changeagent.transport.config import TransportConfig, TransportConfigError
from changeagent.transport.errors import (
    FrameError,
    HandshakeError,
    PeerUnavailable,
    RequestFailed,
    TransportError,
)
from changeagent.transport.frames import (
    ERROR_DISCONNECTED,
    ERROR_INTERNAL,
    ERROR_NOT_LEADER,
    ERROR_QUEUE_FULL,
    ERROR_TIMEOUT,
    ERROR_UNKNOWN_METHOD,
    PROTOCOL_VERSION,
    Challenge,
    Frame,
    Hello,
    Ping,
    Proposal,
    ProposalReply,
    ReadIndexReply,
    ReadIndexRequest,
    RpcRequest,
    RpcResponse,
    RpcValue,
)
from changeagent.transport.link import PeerStats
from changeagent.transport.streams import (
    CLUSTER_PATH,
    ConnectionClosed,
    Dialer,
    FrameStream,
)
from changeagent.transport.tcplink import TcpDialer
from changeagent.transport.transport import (
    OnMessage,
    OnRequest,
    Reply,
    Request,
    RequestContext,
    ResolveAddress,
    Transport,
    TransportStats,
)
from changeagent.transport.websocket import add_cluster_route
from changeagent.transport.wslink import WebSocketDialer

__all__ = [
    "CLUSTER_PATH",
    "ERROR_DISCONNECTED",
    "ERROR_INTERNAL",
    "ERROR_NOT_LEADER",
    "ERROR_QUEUE_FULL",
    "ERROR_TIMEOUT",
    "ERROR_UNKNOWN_METHOD",
    "FRAME_BYTES_MAX_DEFAULT",
    "PROTOCOL_VERSION",
    "Challenge",
    "ConnectionClosed",
    "Credentials",
    "Dialer",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameStream",
    "HandshakeError",
    "Hello",
    "OnMessage",
    "OnRequest",
    "PeerIdentity",
    "PeerStats",
    "PeerUnavailable",
    "Ping",
    "Proposal",
    "ProposalReply",
    "ReadIndexReply",
    "ReadIndexRequest",
    "Reply",
    "Request",
    "RequestContext",
    "RequestFailed",
    "ResolveAddress",
    "RpcRequest",
    "RpcResponse",
    "RpcValue",
    "TcpDialer",
    "Transport",
    "TransportConfig",
    "TransportConfigError",
    "TransportError",
    "TransportStats",
    "WebSocketDialer",
    "add_cluster_route",
    "decode_frame",
    "encode_frame",
    "encode_prefixed",
]
