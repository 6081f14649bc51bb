"""The transport's exceptions, drawn once.

`FrameError` is a remote violation (the peer sent something we refuse); the
connection that carried it is closed. `TransportError` and its subclasses are
what local callers see.
"""

from __future__ import annotations


class FrameError(Exception):
    """A frame is malformed, of an unknown type, wrongly typed, or too large."""


class HandshakeError(Exception):
    """The first frames of a connection did not prove membership of our cluster."""


class TransportError(Exception):
    """Base of the errors raised to local callers."""


class PeerUnavailable(TransportError):
    """No address is known for the peer, or the peer could not be reached in time."""


class RequestFailed(TransportError):
    """A forwarded proposal or RPC could not be delivered or answered.

    `code` is one of the `ERROR_*` strings of `changeagent.transport.frames`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
