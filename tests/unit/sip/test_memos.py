"""The core's memos of values parsed from wire text (`uri._split_hostport`, `wire.address`):
the same answer as without them, bad text still refused every time, and bounded however many
different texts arrive."""

from __future__ import annotations

import pytest

from switchboard.sip import uri, wire
from switchboard.sip.errors import ParseError
from switchboard.sip.uri import SipUri, parse_uri
from switchboard.sip.wire import Address


def test_a_split_kept_is_the_split_made() -> None:
    assert uri._split_hostport("10.0.0.1:5070") == ("10.0.0.1", 5070)
    assert uri._split_hostport("10.0.0.1:5070") == ("10.0.0.1", 5070)
    assert uri._split_hostport("[::1]") == ("[::1]", None)
    assert uri._split_hostport("[::1]") == ("[::1]", None)


@pytest.mark.parametrize("text", ["host:70000", "host:5x", "ho st:5060", "[::1", "a:1:2"])
def test_bad_hostport_is_refused_every_time(text: str) -> None:
    for _ in range(2):  # nothing kept from the first refusal
        with pytest.raises(ParseError):
            uri._split_hostport(text)
    assert text not in uri._HOSTPORTS


def test_hostport_memo_stays_bounded() -> None:
    for port in range(1, uri.HOSTPORTS_KEPT + 50):
        uri._split_hostport(f"192.0.2.1:{port}")
    assert len(uri._HOSTPORTS) <= uri.HOSTPORTS_KEPT
    assert uri._split_hostport("192.0.2.1:7") == ("192.0.2.1", 7)


def test_uris_parse_alike_on_a_kept_hostport() -> None:
    first = parse_uri("sip:alice@192.0.2.9:5080;transport=tcp")
    again = parse_uri("SIP:bob@192.0.2.9:5080")
    assert isinstance(first, SipUri) and isinstance(again, SipUri)
    assert (first.host, first.port, again.host, again.port, again.scheme) == (
        "192.0.2.9", 5080, "192.0.2.9", 5080, "sip")


@pytest.mark.parametrize("text", [":nothing", "1abc:x", "s p:x", "sip"])
def test_bad_schemes_are_still_refused(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


def test_address_memo_gives_one_equal_object_and_stays_bounded() -> None:
    made = wire.address("udp", "192.0.2.1", 5060)
    assert made == Address("udp", "192.0.2.1", 5060)
    assert wire.address("udp", "192.0.2.1", 5060) is made
    for port in range(1, wire.MADE_KEPT + 50):
        wire.address("udp", "192.0.2.2", port)
    assert len(wire._MADE) <= wire.MADE_KEPT
    assert wire.address("tcp", "192.0.2.1", 5060) == Address("tcp", "192.0.2.1", 5060)
