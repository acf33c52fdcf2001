"""The two directions a SIP protocol error can come from (after h11).

`RemoteProtocolError` means the peer sent something we cannot accept; it carries the status
a UAS or proxy answers with (RFC 3261 §8.2, §16.3). `LocalProtocolError` means we were asked
to do something illegal: a bug, or bad management input that slipped past validation.
"""

from __future__ import annotations


class SipError(Exception):
    """Base of every error the SIP core raises on purpose."""


class RemoteProtocolError(SipError):
    """The peer's message is malformed or unacceptable; answer it with `status`."""

    def __init__(self, detail: str, status: int = 400, reason: str = "Bad Request") -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.reason = reason


# The parser's name for it: malformed input raises exactly this type.
ParseError = RemoteProtocolError


class LocalProtocolError(SipError):
    """We were asked to build or send something that SIP does not allow."""
