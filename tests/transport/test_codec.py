"""Codec properties: round-trips, strict refusal of anything malformed, and the
stream decoder fed whole, one byte at a time, and followed by more data."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from changeagent.raft.entry import Entry
from changeagent.raft.interfaces import Membership, Snapshot
from changeagent.raft.messages import Message, MessageType
from changeagent.transport.codec import (
    PREFIX,
    FrameDecoder,
    decode_frame,
    encode_frame,
    encode_prefixed,
)
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
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u64 = st.integers(min_value=0, max_value=2**64 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
node_id = st.integers(min_value=1, max_value=2**63)
small_bytes = st.binary(max_size=64)
text = st.text(max_size=32)

entries = st.builds(Entry, index=u64, term=u64, type=i64, data=small_bytes, key=text)


@st.composite
def memberships(draw: st.DrawFn) -> Membership:
    ids = draw(st.lists(node_id, max_size=6, unique=True))
    split = draw(st.integers(min_value=0, max_value=len(ids)))
    return Membership(voters=frozenset(ids[:split]), learners=frozenset(ids[split:]))


snapshots = st.builds(Snapshot, index=u64, term=u64, membership=memberships(), data=small_bytes)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    source=u64,
    target=u64,
    term=u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=4).map(tuple),
    commit=u64,
    reject=st.booleans(),
    reject_hint=u64,
    snapshot=st.none() | snapshots,
    context=small_bytes,
)
rpc_values = st.recursive(
    st.none() | st.booleans() | i64 | st.floats(allow_nan=False) | text | small_bytes,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
frames: st.SearchStrategy[Frame] = st.one_of(
    messages,
    st.builds(Challenge, version=u64, nonce=small_bytes),
    st.builds(
        Hello,
        version=u64,
        cluster_id=u64,
        node_id=u64,
        nonce=small_bytes,
        proof=small_bytes,
        link=st.booleans(),
    ),
    st.builds(Proposal, request_id=u64, entry_type=i64, data=small_bytes, key=text),
    st.builds(ProposalReply, request_id=u64, index=u64, error_code=text, error_message=text),
    st.builds(ReadIndexRequest, request_id=u64),
    st.builds(ReadIndexReply, request_id=u64, index=u64, error_code=text, error_message=text),
    st.builds(RpcRequest, request_id=u64, method=text, payload=rpc_values),
    st.builds(RpcResponse, request_id=u64, payload=rpc_values, error_code=text, error_message=text),
    st.just(Ping()),
)


@SETTINGS
@given(frames)
def test_round_trip(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame)) == frame


@SETTINGS
@given(st.lists(frames, max_size=5), st.binary(max_size=3))
def test_stream_decoder_whole_bytewise_and_with_trailing_data(
    sent: list[Frame], trailing: bytes
) -> None:
    stream = b"".join(encode_prefixed(frame) for frame in sent)
    assert FrameDecoder().feed(stream) == sent

    decoder = FrameDecoder()
    received: list[Frame] = []
    for offset in range(len(stream)):
        received.extend(decoder.feed(stream[offset : offset + 1]))
    assert received == sent
    assert decoder.buffered_bytes == 0

    # Trailing bytes that do not complete a frame stay buffered; nothing is lost or invented.
    partial = trailing[: PREFIX.size - 1]
    decoder = FrameDecoder()
    assert decoder.feed(stream + partial) == sent
    assert decoder.buffered_bytes == len(partial)


@SETTINGS
@given(st.binary(max_size=256))
def test_random_bodies_raise_only_frame_error(body: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_frame(body)


@SETTINGS
@given(st.binary(max_size=256))
def test_random_streams_raise_only_frame_error(stream: bytes) -> None:
    decoder = FrameDecoder(frame_bytes_max=1024)
    try:
        for offset in range(0, len(stream), 7):
            decoder.feed(stream[offset : offset + 7])
    except FrameError:
        pass


@SETTINGS
@given(frames, st.data())
def test_mutated_frames_raise_only_frame_error(frame: Frame, data: st.DataObject) -> None:
    body = bytearray(encode_frame(frame))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
        body[position] = data.draw(st.integers(min_value=0, max_value=255))
    with contextlib.suppress(FrameError):
        decode_frame(bytes(body))


def _fields(frame: Frame) -> list[object]:
    fields: list[object] = msgpack.unpackb(encode_frame(frame), raw=False)
    return fields


def _packed(fields: object) -> bytes:
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return body


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


MESSAGE = Message(
    type=MessageType.SNAPSHOT,
    source=1,
    target=2,
    term=3,
    entries=(Entry(index=1, term=1, type=0, data=b"x"),),
    snapshot=Snapshot(index=1, term=1, membership=Membership(voters=frozenset({1, 2}))),
)


def _replaced(position: int, value: object) -> bytes:
    fields = _fields(MESSAGE)
    fields[position] = value
    return _packed(fields)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        _packed([]),
        _packed({"a": 1}),
        _packed([99]),
        _packed(["1"]),
        _packed([True]),
        _packed([10, 1]),  # ping with a field
        _replaced(1, 77),  # unknown message type
        _replaced(2, True),  # bool where an int belongs
        _replaced(3, -1),  # negative node id
        _replaced(4, -(2**63)),  # negative term
        _replaced(12, "text"),  # context must be bytes
        _replaced(7, [[1, 1, 0, "text not bytes", ""]]),
        _replaced(7, [[1, 1, 0, b"x"]]),  # entry with 4 fields
        _replaced(9, 1),  # reject must be a bool
        _replaced(11, [1, 1, [1, 2], [2], b""]),  # voter and learner at once
        _replaced(11, [1, 1, [0], [], b""]),  # node id 0
        _replaced(11, [1, 1, [2, 2], [], b""]),  # duplicate voter
        _packed([*_fields(MESSAGE), 0]),  # one field too many
        _packed([8, 1, "m", msgpack.ExtType(5, b"x")]),  # ext type in an rpc payload
        _packed([8, 1, "m", _nested(40)]),  # payload nested too deep
        _packed([8, 1, "m", None]) + b"\x00",  # trailing bytes inside one body
        b"\xc1",  # never-used msgpack byte
        b"\x93\xa1",  # truncated
    ],
)
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(body)


APPEND = Message(
    type=MessageType.APPEND,
    source=1,
    target=2,
    term=3,
    log_term=3,
    index=7,
    entries=(Entry(index=8, term=3, type=0, data=b"x", key="k"),),
    commit=7,
)


def _append_replaced(position: int, value: object) -> bytes:
    fields = _fields(APPEND)
    fields[position] = value
    return _packed(fields)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        # A message without a snapshot is checked inline first (`_decode_message`);
        # whatever that refuses is checked again field by field, which names it.
        (_append_replaced(1, 77), "unknown message type 77"),
        (_append_replaced(1, True), "message type"),
        (_append_replaced(2, True), "source"),
        (_append_replaced(3, -1), "target"),
        (_append_replaced(4, -(2**63)), "term"),
        (_append_replaced(5, "3"), "log_term"),
        (_append_replaced(6, -7), "index"),
        (_append_replaced(7, {"8": 1}), "entries"),
        (_append_replaced(7, [[8, 3, 0, b"x"]]), "entry has 4 fields"),
        (_append_replaced(8, 1.5), "commit"),
        (_append_replaced(9, 0), "reject"),
        (_append_replaced(10, False), "reject_hint"),
        (_append_replaced(12, "commit"), "context"),
        (_packed(_fields(APPEND)[:-1]), "message has 11 fields"),
    ],
)
def test_a_refused_message_names_its_field(body: bytes, named: str) -> None:
    with pytest.raises(FrameError, match=named):
        decode_frame(body)


def test_a_message_decodes_to_what_was_encoded_with_and_without_its_snapshot() -> None:
    assert decode_frame(encode_frame(APPEND)) == APPEND
    assert decode_frame(encode_frame(MESSAGE)) == MESSAGE


def test_oversized_body_is_refused_before_decoding() -> None:
    body = encode_frame(Proposal(request_id=1, entry_type=0, data=b"x" * 100))
    with pytest.raises(FrameError, match="exceeds"):
        decode_frame(body, frame_bytes_max=50)


def test_stream_decoder_refuses_an_oversized_prefix_before_the_body_arrives() -> None:
    decoder = FrameDecoder(frame_bytes_max=1000)
    with pytest.raises(FrameError, match="exceeds"):
        decoder.feed(PREFIX.pack(1001))
    with pytest.raises(FrameError):
        decoder.feed(b"")  # a failed stream stays failed
