"""The SDP edits of hold and unhold: direction per stream (spec §7.3.3), o= version (RFC 3264 §8).

Only the lines that must change change; line endings stay as the party wrote them.
"""

from __future__ import annotations

import pytest

from switchboard.sip.errors import LocalProtocolError
from switchboard.sip.sdp import check_sdp, origin_version, set_direction, with_origin_version

TWO_STREAMS = (
    b"v=0\r\n"
    b"o=bob 2890844527 2890844527 IN IP4 192.0.2.2\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.2\r\n"
    b"t=0 0\r\n"
    b"a=sendonly\r\n"  # session level: stays as it is
    b"m=audio 49170 RTP/AVP 0 8\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=sendrecv\r\n"
    b"a=ptime:20\r\n"
    b"m=video 51372 RTP/AVP 31\r\n"
    b"a=rtpmap:31 H261/90000\r\n"
)


def test_direction_is_replaced_in_place_or_appended_per_stream() -> None:
    out = set_direction(TWO_STREAMS, "inactive")
    assert out == (
        b"v=0\r\n"
        b"o=bob 2890844527 2890844527 IN IP4 192.0.2.2\r\n"
        b"s=-\r\n"
        b"c=IN IP4 192.0.2.2\r\n"
        b"t=0 0\r\n"
        b"a=sendonly\r\n"
        b"m=audio 49170 RTP/AVP 0 8\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=inactive\r\n"
        b"a=ptime:20\r\n"
        b"m=video 51372 RTP/AVP 31\r\n"
        b"a=rtpmap:31 H261/90000\r\n"
        b"a=inactive\r\n"
    )


def test_appended_direction_ends_its_own_stream_block() -> None:
    sdp = (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\n"
           b"m=audio 1 RTP/AVP 0\r\nc=IN IP4 h\r\n"
           b"m=audio 2 RTP/AVP 0\r\na=recvonly\r\n")
    assert set_direction(sdp, "sendonly") == (
        b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\n"
        b"m=audio 1 RTP/AVP 0\r\nc=IN IP4 h\r\na=sendonly\r\n"
        b"m=audio 2 RTP/AVP 0\r\na=sendonly\r\n"
    )


@pytest.mark.parametrize("direction", ["sendrecv", "sendonly", "recvonly", "inactive"])
def test_each_direction_word(direction: str) -> None:
    out = set_direction(TWO_STREAMS, direction)
    assert out is not None
    lines = out.split(b"\r\n")
    assert lines[5] == b"a=sendonly"  # the session-level line
    assert lines.count(b"a=" + direction.encode()) == 2 + (direction == "sendonly")


def test_direction_is_matched_case_insensitively() -> None:
    sdp = b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\na=SendRecv\r\n"
    assert set_direction(sdp, "inactive") == (
        b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\na=inactive\r\n"
    )


def test_nothing_to_do_returns_none() -> None:
    sdp = (b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\na=sendrecv\r\n"
           b"m=audio 1 RTP/AVP 0\r\na=inactive\r\nm=audio 2 RTP/AVP 0\r\na=inactive\r\n")
    assert set_direction(sdp, "inactive") is None
    assert set_direction(sdp, "sendrecv") is not None


def test_lf_only_sdp_stays_lf_only() -> None:
    sdp = b"v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 1 RTP/AVP 0\na=sendrecv\n"
    out = set_direction(sdp, "recvonly")
    assert out == b"v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 1 RTP/AVP 0\na=recvonly\n"
    assert with_origin_version(sdp, 2) == (
        b"v=0\no=- 1 2 IN IP4 h\ns=-\nt=0 0\nm=audio 1 RTP/AVP 0\na=sendrecv\n"
    )


def test_crlf_sdp_stays_crlf() -> None:
    out = with_origin_version(TWO_STREAMS, 2890844528)
    assert out == TWO_STREAMS.replace(b"2890844527 2890844527", b"2890844527 2890844528")
    assert b"\n" not in out.replace(b"\r\n", b"")


def test_missing_final_line_break_is_added() -> None:
    sdp = b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0"
    assert set_direction(sdp, "inactive") == sdp + b"\r\na=inactive\r\n"


def test_origin_version() -> None:
    assert origin_version(TWO_STREAMS) == 2890844527
    assert origin_version(b"v=0\r\no=- 7 18446744073709551615 IN IP4 h\r\n") == 2**64 - 1
    assert origin_version(b"v=0\r\ns=-\r\n") is None
    assert origin_version(b"v=0\r\no=broken\r\n") is None


def test_with_origin_version_touches_only_the_version() -> None:
    sdp = b"v=0\r\no=alice 53655765 2353687637 IN IP4 pc33.atlanta.com\r\ns=-\r\n"
    assert with_origin_version(sdp, 2353687638) == (
        b"v=0\r\no=alice 53655765 2353687638 IN IP4 pc33.atlanta.com\r\ns=-\r\n"
    )


def test_unknown_direction_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        set_direction(TWO_STREAMS, "hold")


@pytest.mark.parametrize(
    "sdp",
    [b"", b"o=- 1 1 IN IP4 h\r\nv=0\r\nm=audio 1 RTP/AVP 0\r\n",
     b"v=0\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n", b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\n",
     b"hello"],
)
def test_what_is_not_an_sdp_is_refused(sdp: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        check_sdp(sdp)
    with pytest.raises(LocalProtocolError):
        set_direction(sdp, "inactive")
