"""Binary frames: msgpack arrays `[tag, field, ...]`, validated strictly on decode.

Sans-I/O: bytes in, frames out. `encode_frame`/`decode_frame` handle one frame
body (a WebSocket message carries exactly one); on a byte stream (the TCP
carrier) every body is preceded by its length as 4 big-endian bytes, produced
by `encode_prefixed` and parsed by the incremental `FrameDecoder`.

Decoding never raises anything but `FrameError`: msgpack's own errors, wrong
arity, wrong types (a bool is not an int), out-of-range integers, unknown tags
and bodies over the size limit are all turned into it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack

from changeagent.raft.entry import Entry
from changeagent.raft.interfaces import Membership, Snapshot
from changeagent.raft.messages import Message, MessageType
from changeagent.transport.errors import FrameError
from changeagent.transport.frames import (
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

FRAME_BYTES_MAX_DEFAULT = 16 * 1024 * 1024
PREFIX = struct.Struct(">I")
UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
RPC_DEPTH_MAX = 32  # nesting of RPC payloads; deeper ones are refused, not recursed into

TAG_MESSAGE = 1
TAG_CHALLENGE = 2
TAG_HELLO = 3
TAG_PROPOSAL = 4
TAG_PROPOSAL_REPLY = 5
TAG_READ_INDEX_REQUEST = 6
TAG_READ_INDEX_REPLY = 7
TAG_RPC_REQUEST = 8
TAG_RPC_RESPONSE = 9
TAG_PING = 10


# ---------------------------------------------------------------- encoding


def encode_frame(frame: Frame) -> bytes:
    """The msgpack body of one frame (no length prefix)."""
    body: bytes = msgpack.packb(_fields_of(frame), use_bin_type=True)
    return body


def encode_prefixed(frame: Frame) -> bytes:
    """One frame as it goes on a byte stream: length prefix, then body."""
    body = encode_frame(frame)
    return PREFIX.pack(len(body)) + body


def _fields_of(frame: Frame) -> list[Any]:
    if isinstance(frame, Message):
        return _message_fields(frame)
    if isinstance(frame, Challenge):
        return [TAG_CHALLENGE, frame.version, frame.nonce]
    if isinstance(frame, Hello):
        return [
            TAG_HELLO,
            frame.version,
            frame.cluster_id,
            frame.node_id,
            frame.nonce,
            frame.proof,
            frame.link,
        ]
    if isinstance(frame, Proposal):
        return [TAG_PROPOSAL, frame.request_id, frame.entry_type, frame.data, frame.key]
    if isinstance(frame, ProposalReply):
        return [TAG_PROPOSAL_REPLY, *_reply_fields(frame)]
    if isinstance(frame, ReadIndexRequest):
        return [TAG_READ_INDEX_REQUEST, frame.request_id]
    if isinstance(frame, ReadIndexReply):
        return [TAG_READ_INDEX_REPLY, *_reply_fields(frame)]
    if isinstance(frame, RpcRequest):
        return [TAG_RPC_REQUEST, frame.request_id, frame.method, frame.payload]
    if isinstance(frame, RpcResponse):
        return [
            TAG_RPC_RESPONSE,
            frame.request_id,
            frame.payload,
            frame.error_code,
            frame.error_message,
        ]
    if isinstance(frame, Ping):
        return [TAG_PING]
    raise TypeError(f"not a frame: {frame!r}")


def _reply_fields(frame: ProposalReply | ReadIndexReply) -> list[Any]:
    return [frame.request_id, frame.index, frame.error_code, frame.error_message]


def _message_fields(message: Message) -> list[Any]:
    snapshot = message.snapshot
    return [
        TAG_MESSAGE,
        int(message.type),
        message.source,
        message.target,
        message.term,
        message.log_term,
        message.index,
        [[e.index, e.term, e.type, e.data, e.key] for e in message.entries],
        message.commit,
        message.reject,
        message.reject_hint,
        None if snapshot is None else _snapshot_fields(snapshot),
        message.context,
    ]


def _snapshot_fields(snapshot: Snapshot) -> list[Any]:
    membership = snapshot.membership
    return [
        snapshot.index,
        snapshot.term,
        sorted(membership.voters),
        sorted(membership.learners),
        snapshot.data,
    ]


# ---------------------------------------------------------------- decoding


def decode_frame(body: bytes, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> Frame:
    """Decode and validate one frame body; raise `FrameError` on anything wrong."""
    if len(body) > frame_bytes_max:
        raise FrameError(f"frame of {len(body)} bytes exceeds the limit of {frame_bytes_max}")
    try:
        fields = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except Exception as error:  # msgpack raises many kinds; all mean "malformed"
        raise FrameError(f"malformed msgpack: {type(error).__name__}") from None
    if not isinstance(fields, list) or not fields:
        raise FrameError("a frame is a non-empty array")
    decoder = _DECODERS.get(fields[0]) if type(fields[0]) is int else None
    if decoder is None:
        raise FrameError(f"unknown frame tag {fields[0]!r}")
    return decoder(fields[1:])


def _arity(fields: list[Any], count: int, name: str) -> None:
    if len(fields) != count:
        raise FrameError(f"{name} has {len(fields)} fields, expected {count}")


def _int(value: Any, name: str, low: int = 0, high: int = UINT64_MAX) -> int:
    if type(value) is not int or not low <= value <= high:
        raise FrameError(f"{name} must be an integer in [{low}, {high}]")
    return value


def _bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise FrameError(f"{name} must be a boolean")
    return value


def _bytes(value: Any, name: str) -> bytes:
    if type(value) is not bytes:
        raise FrameError(f"{name} must be bytes")
    return value


def _str(value: Any, name: str) -> str:
    if type(value) is not str:
        raise FrameError(f"{name} must be a string")
    return value


def _list(value: Any, name: str) -> list[Any]:
    if type(value) is not list:
        raise FrameError(f"{name} must be an array")
    return value


_MESSAGE_TYPES = {kind.value: kind for kind in MessageType}


def _decode_message(fields: list[Any]) -> Message:
    # The checks of `_checked_message`, inline for a message without a snapshot
    # (every one a write makes: each member decodes one or two per write). Anything
    # else, or a failed check, goes through `_checked_message`, which names the field.
    if len(fields) == 12:
        kind, source, target, term, log_term, index, entries, commit = fields[:8]
        reject, reject_hint, snapshot, context = fields[8:]
        message_type = _MESSAGE_TYPES.get(kind) if type(kind) is int else None
        if (
            message_type is not None
            and type(source) is int
            and 0 <= source <= UINT64_MAX
            and type(target) is int
            and 0 <= target <= UINT64_MAX
            and type(term) is int
            and 0 <= term <= UINT64_MAX
            and type(log_term) is int
            and 0 <= log_term <= UINT64_MAX
            and type(index) is int
            and 0 <= index <= UINT64_MAX
            and type(entries) is list
            and type(commit) is int
            and 0 <= commit <= UINT64_MAX
            and type(reject) is bool
            and type(reject_hint) is int
            and 0 <= reject_hint <= UINT64_MAX
            and snapshot is None
            and type(context) is bytes
        ):
            return Message(
                message_type,
                source,
                target,
                term,
                log_term,
                index,
                tuple([_decode_entry(entry) for entry in entries]),
                commit,
                reject,
                reject_hint,
                None,
                context,
            )
    return _checked_message(fields)


def _checked_message(fields: list[Any]) -> Message:
    _arity(fields, 12, "message")
    kind, source, target, term, log_term, index, entries, commit = fields[:8]
    reject, reject_hint, snapshot, context = fields[8:]
    message_type = _MESSAGE_TYPES.get(_int(kind, "message type"))
    if message_type is None:
        raise FrameError(f"unknown message type {kind}")
    return Message(
        type=message_type,
        source=_int(source, "source"),
        target=_int(target, "target"),
        term=_int(term, "term"),
        log_term=_int(log_term, "log_term"),
        index=_int(index, "index"),
        entries=tuple(_decode_entry(entry) for entry in _list(entries, "entries")),
        commit=_int(commit, "commit"),
        reject=_bool(reject, "reject"),
        reject_hint=_int(reject_hint, "reject_hint"),
        snapshot=None if snapshot is None else _decode_snapshot(snapshot),
        context=_bytes(context, "context"),
    )


def _decode_entry(value: Any) -> Entry:
    # The checks of `_checked_entry`, inline: an APPEND carries up to 1,024 entries,
    # and a catching-up member decodes ~100,000 a second. A failed check goes
    # through `_checked_entry`, which names the field.
    if type(value) is list and len(value) == 5:
        index, term, kind, data, key = value
        if (
            type(index) is int
            and 0 <= index <= UINT64_MAX
            and type(term) is int
            and 0 <= term <= UINT64_MAX
            and type(kind) is int
            and INT64_MIN <= kind <= INT64_MAX
            and type(data) is bytes
            and type(key) is str
        ):
            return Entry(index, term, kind, data, key)
    return _checked_entry(value)


def _checked_entry(value: Any) -> Entry:
    fields = _list(value, "entry")
    _arity(fields, 5, "entry")
    index, term, kind, data, key = fields
    return Entry(
        _int(index, "entry index"),
        _int(term, "entry term"),
        _int(kind, "entry type", INT64_MIN, INT64_MAX),
        _bytes(data, "entry data"),
        _str(key, "entry key"),
    )


def _decode_snapshot(value: Any) -> Snapshot:
    fields = _list(value, "snapshot")
    _arity(fields, 5, "snapshot")
    index, term, voters, learners, data = fields
    voter_ids = _node_ids(voters, "voters")
    learner_ids = _node_ids(learners, "learners")
    if voter_ids & learner_ids:
        raise FrameError("a node cannot be both voter and learner")
    return Snapshot(
        index=_int(index, "snapshot index"),
        term=_int(term, "snapshot term"),
        membership=Membership(voters=voter_ids, learners=learner_ids),
        data=_bytes(data, "snapshot data"),
    )


def _node_ids(value: Any, name: str) -> frozenset[int]:
    ids = [_int(item, name, low=1) for item in _list(value, name)]
    if len(set(ids)) != len(ids):
        raise FrameError(f"{name} lists a node twice")
    return frozenset(ids)


def _decode_challenge(fields: list[Any]) -> Challenge:
    _arity(fields, 2, "challenge")
    return Challenge(version=_int(fields[0], "version"), nonce=_bytes(fields[1], "nonce"))


def _decode_hello(fields: list[Any]) -> Hello:
    _arity(fields, 6, "hello")
    version, cluster_id, node_id, nonce, proof, link = fields
    return Hello(
        version=_int(version, "version"),
        cluster_id=_int(cluster_id, "cluster_id"),
        node_id=_int(node_id, "node_id"),
        nonce=_bytes(nonce, "nonce"),
        proof=_bytes(proof, "proof"),
        link=_bool(link, "link"),
    )


def _decode_proposal(fields: list[Any]) -> Proposal:
    _arity(fields, 4, "proposal")
    request_id, entry_type, data, key = fields
    return Proposal(
        request_id=_int(request_id, "request_id"),
        entry_type=_int(entry_type, "entry_type", INT64_MIN, INT64_MAX),
        data=_bytes(data, "data"),
        key=_str(key, "key"),
    )


def _reply_parts(fields: list[Any], name: str) -> tuple[int, int, str, str]:
    _arity(fields, 4, name)
    return (
        _int(fields[0], "request_id"),
        _int(fields[1], "index"),
        _str(fields[2], "error_code"),
        _str(fields[3], "error_message"),
    )


def _decode_proposal_reply(fields: list[Any]) -> ProposalReply:
    return ProposalReply(*_reply_parts(fields, "proposal reply"))


def _decode_read_index_request(fields: list[Any]) -> ReadIndexRequest:
    _arity(fields, 1, "read index request")
    return ReadIndexRequest(request_id=_int(fields[0], "request_id"))


def _decode_read_index_reply(fields: list[Any]) -> ReadIndexReply:
    return ReadIndexReply(*_reply_parts(fields, "read index reply"))


def _decode_rpc_request(fields: list[Any]) -> RpcRequest:
    _arity(fields, 3, "rpc request")
    return RpcRequest(
        request_id=_int(fields[0], "request_id"),
        method=_str(fields[1], "method"),
        payload=_rpc_value(fields[2], 0),
    )


def _decode_rpc_response(fields: list[Any]) -> RpcResponse:
    _arity(fields, 4, "rpc response")
    return RpcResponse(
        request_id=_int(fields[0], "request_id"),
        payload=_rpc_value(fields[1], 0),
        error_code=_str(fields[2], "error_code"),
        error_message=_str(fields[3], "error_message"),
    )


def _decode_ping(fields: list[Any]) -> Ping:
    _arity(fields, 0, "ping")
    return Ping()


def _rpc_value(value: Any, depth: int) -> RpcValue:
    if depth > RPC_DEPTH_MAX:
        raise FrameError(f"rpc payload nested deeper than {RPC_DEPTH_MAX}")
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value  # type: ignore[no-any-return]
    if type(value) is list:
        return [_rpc_value(item, depth + 1) for item in value]
    if type(value) is dict:
        if not all(type(key) is str for key in value):
            raise FrameError("rpc payload map keys must be strings")
        return {key: _rpc_value(item, depth + 1) for key, item in value.items()}
    raise FrameError(f"rpc payload holds an unsupported {type(value).__name__}")


_DECODERS: dict[int, Callable[[list[Any]], Frame]] = {
    TAG_MESSAGE: _decode_message,
    TAG_CHALLENGE: _decode_challenge,
    TAG_HELLO: _decode_hello,
    TAG_PROPOSAL: _decode_proposal,
    TAG_PROPOSAL_REPLY: _decode_proposal_reply,
    TAG_READ_INDEX_REQUEST: _decode_read_index_request,
    TAG_READ_INDEX_REPLY: _decode_read_index_reply,
    TAG_RPC_REQUEST: _decode_rpc_request,
    TAG_RPC_RESPONSE: _decode_rpc_response,
    TAG_PING: _decode_ping,
}


class FrameDecoder:
    """Incremental decoder for length-prefixed frames on a byte stream.

    `feed` takes any slice of the stream and returns the frames it completes;
    a partial frame stays buffered. After a `FrameError` the stream is beyond
    repair and the decoder refuses further input.
    """

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> None:
        self._frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._failed = False

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise FrameError("the stream already failed")
        self._buffer += data
        frames: list[Frame] = []
        try:
            while (frame := self._next()) is not None:
                frames.append(frame)
        except FrameError:
            self._failed = True
            raise
        return frames

    def _next(self) -> Frame | None:
        if len(self._buffer) < PREFIX.size:
            return None
        (length,) = PREFIX.unpack_from(self._buffer)
        if length > self._frame_bytes_max:
            # Refused before the body arrives, so an oversized frame never fills memory.
            limit = self._frame_bytes_max
            raise FrameError(f"frame of {length} bytes exceeds the limit of {limit}")
        end = PREFIX.size + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[PREFIX.size : end])
        del self._buffer[:end]
        return decode_frame(body, self._frame_bytes_max)
