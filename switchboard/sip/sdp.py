"""The SDP edits a hold needs: media direction per stream, and the origin version (RFC 3264).

Works on bytes and touches only the lines it must: every other line, and the line endings,
stay as the party wrote them. No full SDP model: a proxy relays SDP, it does not negotiate it.
"""

from __future__ import annotations

import re

from .errors import LocalProtocolError

DIRECTIONS = frozenset({b"sendrecv", b"sendonly", b"recvonly", b"inactive"})
_ORIGIN = re.compile(rb"^(o=\S+ \S+ )(\d+)( .*)$")


def _lines(sdp: bytes) -> tuple[list[bytes], bytes]:
    eol = b"\r\n" if b"\r\n" in sdp else b"\n"
    lines = sdp.split(eol)
    if lines and lines[-1] == b"":
        lines.pop()
    return lines, eol


def check_sdp(sdp: bytes) -> None:
    """Refuse what cannot be an SDP session description (RFC 4566 §5: v=, o=, s=, t=)."""
    lines, _ = _lines(sdp)
    kinds = {line[:2] for line in lines}
    if not lines or not lines[0].startswith(b"v=") or b"o=" not in kinds or b"m=" not in kinds:
        raise LocalProtocolError("stored SDP has no v=, o= or m= line")


def set_direction(sdp: bytes, direction: str) -> bytes | None:
    """Every media stream gets `a=<direction>`; None when all of them already have it.

    A stream's own direction attribute is replaced; a stream without one gets it appended.
    The session-level attribute, if any, is left alone: stream level wins (RFC 3264 §5.1).
    """
    word = direction.encode()
    if word not in DIRECTIONS:
        raise LocalProtocolError(f"unknown media direction {direction!r}")
    check_sdp(sdp)
    lines, eol = _lines(sdp)
    out: list[bytes] = []
    in_media = False
    stream_has: bool | None = None
    changed = False

    def close_stream() -> None:
        nonlocal changed
        if in_media and not stream_has:
            out.append(b"a=" + word)
            changed = True

    for line in lines:
        if line.startswith(b"m="):
            close_stream()
            in_media = True
            stream_has = False
            out.append(line)
            continue
        if in_media and line.startswith(b"a=") and line[2:].strip().lower() in DIRECTIONS:
            stream_has = True
            if line[2:].strip().lower() != word:
                changed = True
            out.append(b"a=" + word)
            continue
        out.append(line)
    close_stream()
    if not changed:
        return None
    return eol.join(out) + eol


def origin_version(sdp: bytes) -> int | None:
    for line in _lines(sdp)[0]:
        m = _ORIGIN.match(line)
        if m:
            return int(m.group(2))
    return None


def with_origin_version(sdp: bytes, version: int) -> bytes:
    """The same SDP with the `o=` session version set to `version` (RFC 3264 §8)."""
    lines, eol = _lines(sdp)
    for i, line in enumerate(lines):
        m = _ORIGIN.match(line)
        if m:
            lines[i] = m.group(1) + str(version).encode() + m.group(3)
            break
    return eol.join(lines) + eol
