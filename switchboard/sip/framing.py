"""Content-Length framing for stream transports (RFC 3261 §18.3).

Bytes arrive in arbitrary chunks; `StreamFramer.feed` returns each complete message as
bytes. Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped. A stream whose
framing is broken raises `ParseError`; the transport closes that connection.
"""

from __future__ import annotations

import re

from .errors import ParseError
from .message import MAX_MESSAGE_SIZE

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.I | re.M)


class StreamFramer:
    __slots__ = ("_buffer", "_scanned", "_total", "max_size")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        # Work done on the message at the front of the buffer, kept across feeds so that a
        # peer sending one byte at a time costs linear time, not quadratic: where the search
        # for the end of the header section resumes, and the message's length once known.
        self._scanned = 0
        self._total: int | None = None
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        out: list[bytes] = []
        while True:
            # Skip keep-alives and stray line ends between messages.
            skip = 0
            while skip < len(buf) and buf[skip] in (13, 10):
                skip += 1
            if skip:
                del buf[:skip]
            if not buf:
                break
            total = self._total
            if total is None:
                total = self._frame_length(buf)
                if total is None:
                    break
                self._total = total
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._scanned = 0
            self._total = None
        return out

    def _frame_length(self, buf: bytearray) -> int | None:
        """Length of the message at the front of `buf`, or None while its header section is
        incomplete."""
        m = _HEADER_END.search(buf, self._scanned)
        if m is None:
            if len(buf) > self.max_size:
                raise ParseError("header section too large", 513, "Message Too Large")
            # A header end (at most 4 bytes) may straddle this read and the next.
            self._scanned = max(0, len(buf) - 3)
            return None
        head = bytes(buf[: m.start()])
        lengths = _CONTENT_LENGTH.findall(head)
        if not lengths:
            raise ParseError("Content-Length required on a stream transport")
        if len(set(lengths)) != 1 or len(lengths[0]) > 9:
            raise ParseError("bad Content-Length")
        total = m.end() + int(lengths[0])
        if total > self.max_size:
            raise ParseError("message too large", 513, "Message Too Large")
        return total
