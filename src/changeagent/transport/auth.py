"""The HELLO handshake: both sides prove they hold the cluster secret.

The accepting side speaks first with a CHALLENGE carrying a fresh nonce Na. The
dialer answers with HELLO(cluster id, node id, nonce Nd, proof) where the proof
is HMAC-SHA256(secret, "dialer" | ids | Na | Nd). The acceptor checks it and
answers with its own HELLO whose proof covers the same transcript under the
label "acceptor", which the dialer checks. The secret never travels; a recorded
HELLO is useless on another connection because that connection has another Na
(and the acceptor's proof is bound to the dialer's fresh Nd); the labels stop a
proof from being reflected back in the other role.

A node with cluster id 0 has no secret: as acceptor it answers with an empty
proof and the connection carries RPCs only (that is how a leader reaches a
standalone node to add it; see DESIGN.md); as dialer its HELLO is refused by
every clustered node.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass, replace

from changeagent.ids import format_id
from changeagent.transport.errors import HandshakeError
from changeagent.transport.frames import PROTOCOL_VERSION, Challenge, Frame, Hello
from changeagent.transport.streams import FrameStream

NONCE_BYTES = 32
_LABEL = b"changeagent-transport-hello-v1"
_IDS = struct.Struct(">QQQ?")


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who we are. Invariant: `cluster_id == 0` exactly when `secret` is empty."""

    node_id: int
    cluster_id: int = 0
    secret: bytes = b""

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise ValueError("node_id must be positive")
        if (self.cluster_id == 0) != (self.secret == b""):
            raise ValueError("a cluster id needs a secret, and a secret needs a cluster id")


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What a finished handshake established about the other side."""

    node_id: int
    cluster_id: int
    # True when the peer proved it holds our cluster's secret; False on a
    # connection that involves a node outside any cluster (RPCs only).
    member: bool
    # True on a persistent link, False on a one-shot call connection.
    link: bool
    # Node id of the side that dialed (ties between two links are broken on it).
    dialer_id: int
    address: str


def proof(
    secret: bytes, role: bytes, hello: Hello, acceptor_id: int, challenge_nonce: bytes
) -> bytes:
    """HMAC over the handshake transcript; `hello` is the dialer's HELLO."""
    ids = _IDS.pack(hello.cluster_id, hello.node_id, acceptor_id, hello.link)
    transcript = b"|".join((_LABEL, role, ids, challenge_nonce, hello.nonce))
    return hmac.new(secret, transcript, hashlib.sha256).digest()


async def _read(stream: FrameStream, timeout_s: float) -> Frame:
    try:
        async with asyncio.timeout(timeout_s):
            return await stream.read_frame()
    except TimeoutError:
        raise HandshakeError("handshake timed out") from None


def _check_version(version: int) -> None:
    if version != PROTOCOL_VERSION:
        raise HandshakeError(f"protocol version {version} is not {PROTOCOL_VERSION}")


async def accept_handshake(
    stream: FrameStream, credentials: Credentials, timeout_s: float
) -> PeerIdentity:
    """Run the acceptor's side; raise `HandshakeError` (or `FrameError`) to refuse."""
    challenge_nonce = secrets.token_bytes(NONCE_BYTES)
    await stream.write_frames([Challenge(PROTOCOL_VERSION, challenge_nonce)])
    hello = await _read(stream, timeout_s)
    if not isinstance(hello, Hello):
        raise HandshakeError(f"the first frame is a {type(hello).__name__}, not a HELLO")
    _check_version(hello.version)
    if len(hello.nonce) != NONCE_BYTES or hello.node_id in (0, credentials.node_id):
        raise HandshakeError("malformed HELLO")
    member = credentials.cluster_id != 0
    if member:
        _verify_dialer(hello, credentials, challenge_nonce)
    answer = Hello(
        version=PROTOCOL_VERSION,
        cluster_id=credentials.cluster_id,
        node_id=credentials.node_id,
        nonce=challenge_nonce,
        proof=proof(credentials.secret, b"acceptor", hello, credentials.node_id, challenge_nonce)
        if member
        else b"",
        link=hello.link,
    )
    await stream.write_frames([answer])
    return PeerIdentity(
        node_id=hello.node_id,
        cluster_id=hello.cluster_id,
        member=member,
        link=hello.link,
        dialer_id=hello.node_id,
        address=stream.remote_address,
    )


def _verify_dialer(hello: Hello, credentials: Credentials, challenge_nonce: bytes) -> None:
    if hello.cluster_id != credentials.cluster_id:
        raise HandshakeError(
            f"node {format_id(hello.node_id)} belongs to cluster {format_id(hello.cluster_id)}"
        )
    # The dialer cannot know our id when it signs, so its proof binds acceptor id 0.
    expected = proof(credentials.secret, b"dialer", hello, 0, challenge_nonce)
    if not hmac.compare_digest(expected, hello.proof):
        raise HandshakeError(f"node {format_id(hello.node_id)} failed to prove the cluster secret")


async def dial_handshake(
    stream: FrameStream,
    credentials: Credentials,
    timeout_s: float,
    link: bool,
    expected_peer_id: int = 0,
) -> PeerIdentity:
    """Run the dialer's side; `expected_peer_id` 0 accepts whoever answers."""
    challenge = await _read(stream, timeout_s)
    if not isinstance(challenge, Challenge):
        raise HandshakeError(f"the first frame is a {type(challenge).__name__}, not a CHALLENGE")
    _check_version(challenge.version)
    if len(challenge.nonce) != NONCE_BYTES:
        raise HandshakeError("malformed CHALLENGE")
    hello = Hello(
        version=PROTOCOL_VERSION,
        cluster_id=credentials.cluster_id,
        node_id=credentials.node_id,
        nonce=secrets.token_bytes(NONCE_BYTES),
        proof=b"",
        link=link,
    )
    if credentials.cluster_id:
        signed = proof(credentials.secret, b"dialer", hello, 0, challenge.nonce)
        hello = replace(hello, proof=signed)
    await stream.write_frames([hello])
    answer = await _read(stream, timeout_s)
    if not isinstance(answer, Hello):
        raise HandshakeError(f"the answer is a {type(answer).__name__}, not a HELLO")
    _check_version(answer.version)
    member = _verify_acceptor(answer, hello, credentials, challenge.nonce)
    if expected_peer_id and answer.node_id != expected_peer_id:
        answered, expected = format_id(answer.node_id), format_id(expected_peer_id)
        raise HandshakeError(f"node {answered} answered instead of node {expected}")
    return PeerIdentity(
        node_id=answer.node_id,
        cluster_id=answer.cluster_id,
        member=member,
        link=link,
        dialer_id=credentials.node_id,
        address=stream.remote_address,
    )


def _verify_acceptor(
    answer: Hello, hello: Hello, credentials: Credentials, challenge_nonce: bytes
) -> bool:
    """True when the acceptor proved membership; False when it is in no cluster."""
    if answer.node_id in (0, credentials.node_id) or answer.nonce != challenge_nonce:
        raise HandshakeError("malformed HELLO answer")
    if answer.cluster_id == 0:
        return False  # a standalone node: fine for a call, refused for a link by the caller
    if answer.cluster_id != credentials.cluster_id:
        raise HandshakeError(
            f"node {format_id(answer.node_id)} belongs to cluster {format_id(answer.cluster_id)}"
        )
    expected = proof(credentials.secret, b"acceptor", hello, answer.node_id, challenge_nonce)
    if not hmac.compare_digest(expected, answer.proof):
        raise HandshakeError(f"node {format_id(answer.node_id)} failed to prove the cluster secret")
    return True
