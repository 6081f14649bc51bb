"""WebSocket framing (RFC 6455) for peer links, without a library in the path.

Peer links on the API port are WebSockets so that members need no second port.
The frames are ours (masking borrows aiohttp's C helper); the HTTP upgrade is
aiohttp's on the accepting side (`websocket.py`) and a fixed request on the
dialing side (`wslink.py`). What a link sends is unfragmented binary frames (one per
transport frame body), pings, pongs and a close; what it accepts is the same,
masked from a dialer and unmasked from an acceptor, as the RFC requires.
Extensions are never negotiated, so any reserved bit is an error.

Why not aiohttp's WebSocket objects: each received message went through a
queue and woke a reader task, and each body sent was a separate system call;
on a 3-member write that crosses four links it cost ~0.1 ms (bench.replication_floor,
`floor+websocket`).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

from changeagent.transport.errors import FrameError

_mask_in_place: Callable[[bytes, bytearray], None] | None
try:  # aiohttp's own, in C when its extensions are built (tests/transport/test_wsframes.py)
    from aiohttp._websocket.helpers import websocket_mask as _mask_in_place
except ImportError:  # pragma: no cover: aiohttp moved it; the fallback is slower, not wrong
    _mask_in_place = None

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_CONTROL_PAYLOAD_MAX = 125
_FIN = 0x80
_RESERVED = 0x70
_MASKED = 0x80
_LENGTH_16 = struct.Struct(">H")
_LENGTH_64 = struct.Struct(">Q")
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_NORMAL = struct.pack(">H", 1000)


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` a server answers to `Sec-WebSocket-Key: key`."""
    digest = hashlib.sha1(key.encode("ascii") + _ACCEPT_GUID).digest()  # SHA-1: the RFC says so
    return base64.b64encode(digest).decode("ascii")


def encode_ws_frame(payload: bytes, opcode: int = OP_BINARY, mask_key: bytes = b"") -> bytes:
    """One final frame; masked with the 4-byte `mask_key` when given (a dialer's)."""
    length = len(payload)
    mask_bit = _MASKED if mask_key else 0
    if length < 126:
        header = bytes((_FIN | opcode, mask_bit | length))
    elif length < 65536:
        header = bytes((_FIN | opcode, mask_bit | 126)) + _LENGTH_16.pack(length)
    else:
        header = bytes((_FIN | opcode, mask_bit | 127)) + _LENGTH_64.pack(length)
    if not mask_key:
        return header + payload
    return header + mask_key + apply_mask(payload, mask_key)


def apply_mask(payload: bytes | bytearray, mask_key: bytes) -> bytes:
    """XOR `payload` with the repeated 4-byte key (masking and unmasking alike).

    With aiohttp's C helper (16 KiB in 0.7 µs); without it, as one big-integer
    operation (26 µs: a batch of APPENDs under load is masked by the dialer and
    unmasked by the acceptor, so the helper is worth its private import)."""
    if _mask_in_place is None:
        return mask_by_integers(payload, mask_key)
    data = bytearray(payload)
    _mask_in_place(mask_key, data)
    return bytes(data)


def mask_by_integers(payload: bytes | bytearray, mask_key: bytes) -> bytes:
    """`apply_mask` without a C helper: no Python loop over the bytes."""
    length = len(payload)
    if not length:
        return b""
    key = (mask_key * (length // 4 + 1))[:length]
    mixed = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return mixed.to_bytes(length, "little")


class WsFrameParser:
    """Splits a byte stream into (opcode, payload) frames and checks each.

    `masked`: whether frames must arrive masked (an acceptor reading its
    dialer) or unmasked (a dialer reading its acceptor). A data frame's payload
    may be at most `payload_bytes_max`; the limit is checked from the header,
    before the payload arrives. After a `FrameError` the stream is beyond repair.
    """

    def __init__(self, payload_bytes_max: int, masked: bool) -> None:
        self._payload_bytes_max = payload_bytes_max
        self._masked = masked
        self._buffer = bytearray()
        self._failed = False

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._failed:
            raise FrameError("the stream already failed")
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bytes]] = []
        start = 0
        try:
            while (parsed := self._next(buffer, start)) is not None:
                frame, start = parsed
                frames.append(frame)
        except FrameError:
            self._failed = True
            raise
        del buffer[:start]
        return frames

    def _next(self, buffer: bytearray, start: int) -> tuple[tuple[int, bytes], int] | None:
        available = len(buffer) - start
        if available < 2:
            return None
        first, second = buffer[start], buffer[start + 1]
        opcode = first & 0x0F
        self._check_header(first, second, opcode)
        length = second & 0x7F
        offset = start + 2
        if length == 126:
            if available < 4:
                return None
            (length,) = _LENGTH_16.unpack_from(buffer, offset)
            offset += 2
        elif length == 127:
            if available < 10:
                return None
            (length,) = _LENGTH_64.unpack_from(buffer, offset)
            offset += 8
        if length > self._payload_bytes_max:
            limit = self._payload_bytes_max
            raise FrameError(f"WebSocket frame of {length} bytes exceeds the limit of {limit}")
        if opcode >= OP_CLOSE and length > _CONTROL_PAYLOAD_MAX:
            raise FrameError(f"WebSocket control frame of {length} bytes")
        mask_key = b""
        if self._masked:
            mask_key = bytes(buffer[offset : offset + 4])
            offset += 4
        end = offset + length
        if len(buffer) < end:
            return None
        if mask_key:
            payload = apply_mask(buffer[offset:end], mask_key)
        else:
            payload = bytes(buffer[offset:end])
        return (opcode, payload), end

    def _check_header(self, first: int, second: int, opcode: int) -> None:
        if first & _RESERVED:
            raise FrameError("WebSocket frame with reserved bits set (no extension agreed)")
        if not first & _FIN or opcode == OP_CONTINUATION:
            raise FrameError("fragmented WebSocket message")
        if opcode not in (OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            raise FrameError(f"unknown WebSocket opcode {opcode}")
        if bool(second & _MASKED) != self._masked:
            expected = "masked" if self._masked else "unmasked"
            raise FrameError(f"WebSocket frame not {expected}")
